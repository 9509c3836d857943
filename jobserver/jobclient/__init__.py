"""The jobclient: fire N held job requests at once and judge what comes back.

``jobclient --url URL --account NAME [--jobs 50] [--deadline 5] [--json]`` posts
``{"account": NAME, "wait": true}`` to ``URL`` ``--jobs`` times at once, then speaks as
the original client did::

     50 / 50 [=================================================] 100.00 % 1s

    Succeeded: 50
    Average Duration: 0.532087121 seconds
    Total Duration: 0.601318954 seconds

    WORK SAMPLE RESULT: PASSED

    Proof :
    H4sIAAAAAAAC/...

One module per part, each depending only on those before it:

- :mod:`~jobserver.jobclient.run` sends the requests and returns a ``RunReport`` of
  per-job ``JobOutcome`` values; it never raises for what the server does.
- :mod:`~jobserver.jobclient.verdict` decides PASSED or FAILED from a report and a
  deadline (on PASSED with the proof bundle, see :mod:`jobserver.proofs`) and turns both
  into text or JSON.
- :mod:`~jobserver.jobclient.progress` is the live line on a terminal (count lines
  elsewhere), fed each outcome as it arrives.
- :mod:`~jobserver.jobclient.__main__` is the command line: options, exit codes, and the
  three above put together.
"""
