"""The public operations, one module per family; each validates through :mod:`fastconv.geometry`
and runs on :mod:`fastconv.backends`.

====================  =========================================================================
module                operations
====================  =========================================================================
``conv2d``            :func:`~fastconv.conv2d`, :func:`~fastconv.use_backend`
``transpose``         :func:`~fastconv.conv_transpose2d`
``pooling``           :func:`~fastconv.max_pool2d`, :func:`~fastconv.avg_pool2d`
``signal``            :func:`~fastconv.convolve2d`, :func:`~fastconv.correlate2d` (scipy's)
``local``             :func:`~fastconv.local_conv2d`, :func:`~fastconv.tiled_conv2d`
``depthwise``         :func:`~fastconv.depthwise_separable_conv2d`
``separable``         :func:`~fastconv.separate`, :func:`~fastconv.separable_conv2d`
``receptive_field``   :func:`~fastconv.receptive_field`
``initializers``      ``fastconv.init``: Glorot and He initialisation
====================  =========================================================================

``operands`` holds the operand handling they share (the dask functions use it too).
"""
