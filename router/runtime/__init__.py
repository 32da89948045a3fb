"""The runtimes' shared policy, and ``email-router run``, the single-process runtime.

Policy both runtimes use (the Celery runtime, in ``workers/``, imports these too):

* :mod:`router.runtime.watch` - following the configuration file (one watcher per process);
* :mod:`router.runtime.pause` - pausing an instance after an error whose action is "stop";
* :mod:`router.runtime.summary` - what a cycle did: task results and progress lines;
* :mod:`router.runtime.periods` - how often housekeeping runs.

``email-router run`` (one process, a thread pool, SQLite state by default, no Redis, no Celery):

* :mod:`router.runtime.standalone` - process entry: ``main``, signals, ``open_runtime``;
* :mod:`router.runtime.schedule` - scheduling: slots, due times, reloads, shutdown;
* :mod:`router.runtime.cycle` - running one cycle of one instance (never raises);
* :mod:`router.runtime.contexts` - the context of each configuration and its CRM adapters.

``email-router status`` (:mod:`router.cli.status`) reads what either runtime does from the state
store. Runtimes call the use-cases only through :mod:`router.service`.
"""
