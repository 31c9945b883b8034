"""Whole studies: a TOML study file expanded into jobs (encode, train, corrupt, evaluate), run locally or on Ray.

Module map: ``spec`` (study file -> typed, validated dataclasses), ``template`` (the commented template of
``nemesis study init``), ``plan`` (jobs, dependencies, done-detection, shards), ``costs`` (cost estimate),
``records`` (the ``reports/jobs`` table), ``work`` (the one adapter over the training and corruption
library), ``faults`` (a test hook that kills a worker mid-job), ``executors`` (local and Ray),
``runner`` (the driver loop: dispatch, retries, progress), ``status`` (done / running / failed / to do),
``outputs`` (summary tables and figures at the end of a run).
"""
