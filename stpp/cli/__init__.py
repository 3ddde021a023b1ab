"""The command line, ``python -m stpp run|eval|predict|worker|project``: one parser, its handlers grouped
by what they load.

- :mod:`~stpp.cli.main`: the top parser and the dispatch (``python -m stpp`` runs its ``main``);
- :mod:`~stpp.cli.engine_args`, :mod:`~stpp.cli.engine`: ``run``, ``eval`` and ``predict`` (headless, on
  a dataset) and ``worker``; they load torch;
- :mod:`~stpp.cli.project_args`, :mod:`~stpp.cli.projects`, :mod:`~stpp.cli.project_runs`: ``project ...``,
  the store's projects and their runs and reviews, through the functions the app uses, without torch
  in this process (``project predict`` excepted);
- :mod:`~stpp.cli.progress`: tqdm bars on stderr; :mod:`~stpp.cli.output`: exit codes, one-line errors,
  tables.

The argument modules import neither torch nor the store: ``--help`` loads neither, the engine's
commands run where sqlite-utils is missing (a bare GPU machine) and the project commands without torch.
"""
