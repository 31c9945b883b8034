"""Where jobs run: in this process (``local``), or on long-lived Ray actors that keep models warm (``ray``).

Both executors take jobs with ``submit`` and hand back :class:`Outcome` objects from ``wait``. A job that
fails with our own error (bad data, bad config) or a bug is an outcome with ``retryable=False``; a worker
that dies or runs out of memory gives ``retryable=True`` and the runner decides whether to retry. The Ray
executor starts one actor per slot (``resources.num_cpus``/``num_gpus`` each), each with one Session whose
model and dataset caches serve every job it runs, and replaces an actor that died.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, field

from nemesis_analysis.errors import ConfigError, NemesisError
from nemesis_analysis.session import Session
from nemesis_analysis.study import work
from nemesis_analysis.study.plan import Job
from nemesis_analysis.study.spec import Outputs, Study

FORWARDED_ENV_PREFIXES = ("NEMESIS_", "HF_HUB_OFFLINE", "HF_HOME")  # the driver's settings that workers need


@dataclass
class Outcome:
    job_id: str
    ok: bool
    summary: dict = field(default_factory=dict)
    error: str = ""
    retryable: bool = False  # a system failure (worker died, out of memory): worth another attempt
    stopped: bool = False  # a stop request (SIGTERM) ended it at a saved point: lost, resumed by the next run
    host: str = ""
    seconds: float = 0.0  # time the job ran on its worker


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError))


def execute(job: Job, session: Session, should_stop=work.never_stop) -> Outcome:
    """Run one job here; every exception becomes a failed outcome (retryable only when out of memory)."""
    started = time.perf_counter()
    host = socket.gethostname()
    try:
        summary = work.run_job(job, session, should_stop)
    except work.JobStopped as error:
        return Outcome(job.id, False, error=str(error), stopped=True, host=host, seconds=time.perf_counter() - started)
    except NemesisError as error:
        return Outcome(job.id, False, error=str(error), host=host, seconds=time.perf_counter() - started)
    except Exception as error:  # a bug or a system failure: reported with its type, never silently
        message = f"{type(error).__name__}: {error}"
        outcome = Outcome(job.id, False, error=message, retryable=_is_out_of_memory(error), host=host,
                          seconds=time.perf_counter() - started)  # fmt: skip
    else:
        return Outcome(job.id, True, summary=summary, host=host, seconds=time.perf_counter() - started)
    if outcome.retryable:  # out of the handler, the exception no longer pins the job's tensors
        release_device_memory()
    return outcome


def release_device_memory() -> None:
    """Free what a failed job left: collect its reference cycles, then return cached CUDA blocks to the driver."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_devices(study: Study, executor: str) -> None:
    """Refuse, before any work and in one line, device settings that no job of ``executor`` could run with."""
    from nemesis_analysis.devices import check_cuda_device, cuda_count

    device, gpus = study.outputs.device, study.resources.num_gpus
    if device.startswith("cuda") and gpus <= 0:
        raise ConfigError(
            f'outputs.device = "{device}" but resources.num_gpus = 0 gives the jobs no GPU; '
            'set resources.num_gpus = 1 (or outputs.device = "auto")'
        )
    if executor == "ray":
        if device.startswith("cuda:") and device != "cuda:0":
            raise ConfigError(
                f'outputs.device = "{device}": every Ray worker sees the GPU it holds as cuda:0; '
                'set outputs.device = "cuda" and let resources.num_gpus place the jobs'
            )
        return
    if gpus > 0 and cuda_count() == 0:
        raise ConfigError(
            f"resources.num_gpus = {gpus:g} on the local executor, but no CUDA device is visible to torch here; "
            "set resources.num_gpus = 0 to run on the CPU"
        )
    if device.startswith("cuda"):
        import torch

        check_cuda_device(torch.device(device), f"outputs.device = {device}")


def local_outputs(outputs: Outputs, num_gpus: float) -> Outputs:
    """The [outputs] local jobs run with: ``device = "auto"`` becomes the device the plan resolved configs for
    (``cuda`` when ``resources.num_gpus`` > 0, else ``cpu``), so run ids match the plan's."""
    if outputs.device != "auto":
        return outputs
    return dataclasses.replace(outputs, device="cuda" if num_gpus > 0 else "cpu")


class LocalExecutor:
    """Runs jobs one at a time in this process, in the order they are submitted, on the device the plan
    resolved their configs for (:func:`local_outputs`)."""

    name = "local"

    def __init__(self, study: Study, should_stop=None):
        check_devices(study, self.name)
        self.session = work.session_for(local_outputs(study.outputs, study.resources.num_gpus))
        self.queue: list[Job] = []
        self.capacity = 1
        self.stopping = False
        self.should_stop = should_stop or (lambda: False)  # read inside the job: the driver waits on it

    def request_stop(self) -> None:
        """The job running here ends at its next saved point (after an epoch or a sweep chunk)."""
        self.stopping = True

    def start(self, num_jobs: int) -> None:
        pass

    @property
    def running(self) -> int:
        return len(self.queue)

    def submit(self, job: Job) -> None:
        self.queue.append(job)

    def wait(self) -> list[Outcome]:
        stop = lambda *_: self.stopping or self.should_stop()  # noqa: E731
        return [execute(self.queue.pop(0), self.session, stop)] if self.queue else []

    def close(self) -> None:
        self.queue.clear()


# ------------------------------------------------------------------------------------------------------- Ray


def _worker_class(ray):
    """The actor class (made here, so that importing this module does not need Ray)."""

    class StudyWorker:
        def __init__(self, outputs: Outputs, num_cpus: float):
            import torch

            import nemesis_analysis.corruption.sweep_runs  # noqa: F401 - imported once at start-up, not in the first job's time
            import nemesis_analysis.training.train  # noqa: F401

            torch.set_num_threads(max(1, int(num_cpus)))  # the CPUs this actor holds
            self.session = work.session_for(outputs)
            self.stopping = False

        def run(self, job: dict) -> dict:
            return asdict(execute(Job.from_dict(job), self.session, lambda *_: self.stopping))

        def request_stop(self) -> None:  # runs beside ``run`` (two threads): the job stops at its next saved point
            self.stopping = True

    return ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=2)(StudyWorker)


def _signal_handlers() -> dict:
    return {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(handlers: dict) -> None:
    if threading.current_thread() is threading.main_thread():
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)


def forwarded_env() -> dict[str, str]:
    """Environment variables of the driver that workers get too (data and cache folders, offline mode)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


class RayExecutor:
    """Runs jobs on Ray actors: ``address`` joins a cluster ("auto" or HOST:PORT), None starts a local Ray."""

    name = "ray"

    def __init__(self, study: Study, address: str | None = None, max_parallel: int | None = None):
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'nemesis-analysis[ray]'") from None
        check_devices(study, self.name)  # before Ray starts
        self.ray, self.study = ray, study
        self.resources = study.resources
        self.max_parallel = max_parallel or self.resources.max_parallel
        self.started_ray = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            handlers = _signal_handlers()
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
            _restore_signal_handlers(handlers)  # SIGTERM stays the driver's: stop at saved points, record lost jobs
            self.started_ray = True
        self.worker_class = _worker_class(ray)
        self.idle: list = []
        self.pending: dict = {}  # object ref -> (job, actor)
        self.warm: dict = {}  # actor -> dataset of its last job (sent the same dataset next, to reuse caches)
        self.capacity = 0

    def slots(self) -> int:
        """How many jobs the cluster can hold at once with the study's per-job resources."""
        total = self.ray.cluster_resources()
        slots = math.floor(total.get("CPU", 0) / self.resources.num_cpus + 1e-9)
        if self.resources.num_gpus > 0:
            slots = min(slots, math.floor(total.get("GPU", 0) / self.resources.num_gpus + 1e-9))
        if slots < 1:
            raise ConfigError(
                f"the Ray cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs, less than one job's "
                f"resources.num_cpus={self.resources.num_cpus:g}, num_gpus={self.resources.num_gpus:g}; lower them"
            )
        return slots

    def _new_actor(self):
        env = forwarded_env()
        options = {"num_cpus": self.resources.num_cpus, "num_gpus": self.resources.num_gpus}
        if env:
            options["runtime_env"] = {"env_vars": env}
        return self.worker_class.options(**options).remote(self.study.outputs, self.resources.num_cpus)

    def start(self, num_jobs: int) -> None:
        count = min(self.slots(), num_jobs, self.max_parallel or num_jobs)
        self.idle = [self._new_actor() for _ in range(max(count, 0))]
        self.capacity = len(self.idle)

    @property
    def running(self) -> int:
        return len(self.pending)

    def submit(self, job: Job) -> None:
        # Prefer an idle actor whose last job used the same dataset: its model and features are warm.
        actor = next((a for a in self.idle if self.warm.get(a) == job.dataset), self.idle[0])
        self.idle.remove(actor)
        self.warm[actor] = job.dataset
        self.pending[actor.run.remote(job.as_dict())] = (job, actor)

    def wait(self, timeout: float = 1.0) -> list[Outcome]:
        ray = self.ray
        if not self.pending:
            return []
        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        outcomes = []
        for ref in ready:
            job, actor = self.pending.pop(ref)
            try:
                outcomes.append(Outcome(**ray.get(ref)))
                self.idle.append(actor)
            except ray.exceptions.RayTaskError as error:  # raised outside our handler (e.g. unpicklable)
                outcomes.append(Outcome(job.id, False, error=str(error).splitlines()[0]))
                self.idle.append(actor)
            except ray.exceptions.RayError as error:  # the actor or its node died, or memory ran out
                outcomes.append(Outcome(job.id, False, error=f"{type(error).__name__}: worker lost", retryable=True))
                self.warm.pop(actor, None)
                self.ray.kill(actor, no_restart=True)
                self.idle.append(self._new_actor())
        return outcomes

    def request_stop(self) -> None:
        """Every running job ends at its next saved point; its outcome comes back from ``wait`` as stopped."""
        for _, actor in self.pending.values():
            actor.request_stop.remote()

    def close(self) -> None:
        for actor in [*self.idle, *(actor for _, actor in self.pending.values())]:
            self.ray.kill(actor, no_restart=True)
        self.idle, self.pending = [], {}
        if self.started_ray:
            self.ray.shutdown()


def make_executor(
    name: str, study: Study, address: str | None = None, max_parallel: int | None = None, should_stop=None
):
    if name == "local":
        return LocalExecutor(study, should_stop)
    elif name == "ray":
        return RayExecutor(study, address, max_parallel)
    else:
        raise ConfigError(f"--executor {name!r}: choose local or ray")
