"""The TensorRT backend as one unit: engines built from a model directory (``backend``), their
optimisation profiles (``profiles``), the engine cache (``engine_cache``), the CUDA memory and
stream shim over cuda-python or pycuda (``cuda_api``), the FP32 region of FP16 networks
(``precision``) and ``clit-build`` (``build_cli``).  Importing this package needs neither
TensorRT nor CUDA; the modules that do import them lazily."""
