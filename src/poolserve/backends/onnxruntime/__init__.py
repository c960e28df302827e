"""The ONNX Runtime backend: encoder models, float32, on the CPU (or CUDA with
onnxruntime-gpu). Opt-in (``--backend onnxruntime``): measured slower than OpenVINO on
x86 CPUs, so ``auto`` does not pick it. No runtime is imported here."""
