"""Job folders: every command that writes results writes them into one folder, as a job.

Pattern for a command (inputs are validated and loaded BEFORE the job is opened, so bad input never
touches existing outputs; ``Job.open`` itself only checks the folder and writes nothing)::

    particles = read_particles(star, datadir=datadir)          # InputError here: nothing written
    job = Job.open(out, command="backproject", params={...}, inputs=[star],
                   overwrite=overwrite, resume=resume)         # InputError if the folder is refused
    with job:                                                  # folder, job.json (running), run.log
        state = job.load_checkpoint("iter") or initial_state()
        for it in range(state["it"], n_iter):
            ...
            job.save_checkpoint("iter", {"it": it + 1, ...})  # atomic: resume after a kill
        write_map(job.path("map.mrc"), volume, apix)
        job.write_report(report)                               # report.html with links to run.log, job.json

The folder holds ``job.json`` (command line, parameters, inputs with sizes and mtimes, versions, host,
start/end times, status ``running``/``finished``/``failed``/``interrupted`` and the error), ``run.log``
(the ``vitreous`` logger for the job's duration), ``checkpoints/`` and the results.  A finished job is
replaced only with ``overwrite``; an unfinished one needs ``resume`` (same parameters and inputs) or
``overwrite``; a non-empty folder that is not a job folder is refused.  SIGTERM ends a job as 'interrupted'.
"""

from vitreous.jobs.job import Job
from vitreous.jobs.record import FAILED, FINISHED, INTERRUPTED, RUNNING

__all__ = ["FAILED", "FINISHED", "INTERRUPTED", "RUNNING", "Job"]
