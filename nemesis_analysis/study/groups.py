"""Sibling train jobs run as one group: one job execution trains them fused, and each member keeps its own state.

Train jobs whose runs see the same data stream (:mod:`nemesis_analysis.training.siblings`: same dataset,
model, precision, shots, seed, protocol, epochs and batches) are bundled, when they are ready together, into
one ``train_group`` job that an executor runs like any other (locally, on a Ray actor; shards keep siblings
together: ``plan.shard_of``). Its
outcome carries one entry per member, which :func:`member_outcomes` turns back into the members' own outcomes,
so ``reports/jobs`` records each member's state, and a lost group retries each member. Torch-free.
"""

from __future__ import annotations

from nemesis_analysis.config import RunConfig
from nemesis_analysis.study.plan import Job
from nemesis_analysis.training.siblings import stream_key

GROUP_KIND = "train_group"


def sibling_key(job: Job) -> tuple | None:
    """The data-stream key of a train job's run (jobs with equal keys can train fused); None for other kinds."""
    if job.kind != "train":
        return None
    return (job.kind, stream_key(RunConfig.from_dict(job.payload["config"])))


def bundle(ready: list[Job], candidates: list[Job]) -> list[tuple[Job, list[Job]]]:
    """``ready`` as units to submit: (job, [job]) alone, or (a group job, its members) for a train job with
    siblings among ``ready`` or ``candidates`` (queued jobs that are ready too). Members keep ``ready``'s
    order, and candidates follow; each job is in one unit."""
    units: list[tuple[Job, list[Job]]] = []
    pool = list({job.id: job for job in [*ready, *candidates]}.values())  # a ready job may be a candidate too
    taken: set[str] = set()
    for job in ready:
        if job.id in taken:
            continue
        key = sibling_key(job)
        members = [job]
        if key is not None:
            members += [o for o in pool if o.id != job.id and o.id not in taken and sibling_key(o) == key]
        taken.update(member.id for member in members)
        units.append((job, members) if len(members) == 1 else (group_job(members), members))
    return units


def group_job(members: list[Job]) -> Job:
    """The one job that trains ``members`` (train jobs of sibling runs) fused."""
    first = members[0]
    label = f"{first.label} and {len(members) - 1} sibling run{'s' if len(members) > 2 else ''}"
    return Job(f"group:{first.id}+{len(members) - 1}", GROUP_KIND, first.dataset, "", label,
               payload={"members": [member.as_dict() for member in members]})  # fmt: skip


def member_outcomes(outcome, members: list[Job]) -> list:
    """The members' own outcomes (``executors.Outcome``) from a group's: each its entry of the summary, or the
    group's failure (retryable for all when the worker was lost); each is given an equal share of the time."""
    entries = outcome.summary.get("members", {}) if outcome.ok else {}
    share = outcome.seconds / max(1, len(members))
    result = []
    for member in members:
        entry = entries.get(member.id)
        if entry is None:
            error = outcome.error or f"group {outcome.job_id} returned nothing for job {member.id}"
            result.append(type(outcome)(member.id, False, error=error, retryable=outcome.retryable,
                                        host=outcome.host, seconds=share))  # fmt: skip
        else:
            result.append(type(outcome)(member.id, entry["ok"], summary=entry.get("summary", {}),
                                        error=entry.get("error", ""), host=outcome.host, seconds=share))  # fmt: skip
    return result
