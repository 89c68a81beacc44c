"""The tooling around the library: the benchmark harness, the trade-off report and the command line.

=============  ====================================================================
module         what
=============  ====================================================================
``cases``      the problems timed: canonical layers, image filters, the suites
``bench``      timing backends here and peers (torch, scipy, OpenCV) in their own processes
``isolated``   one function in a fresh process: the comparison scripts' runner
``report``     ``fastconv report``: sweeps, plots and a Markdown page
``cli``        the ``fastconv`` command
=============  ====================================================================
"""
