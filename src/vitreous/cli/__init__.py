"""The ``vitreous`` command line (typer).

``main.py`` holds the app and ``run()`` (the console script).  Each command lives in its own module
with a ``register(app)`` function, listed in ``main.COMMANDS``; adding a command means adding a module
and its name there.  Command modules import heavy libraries (torch, matplotlib) inside the command
function, not at module level: ``vitreous info`` must stay light (a test checks that it never imports
torch).  Bad input raises :class:`vitreous.errors.InputError`, which ``run()`` prints as one line
``vitreous: error: ...`` with exit code 2.  Commands that write results use :mod:`vitreous.jobs`.
"""
