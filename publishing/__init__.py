"""Publishing: assemble a SafeRoute model folder (`package`), export it to ONNX (`export`) and
upload model and dataset folders to the Hub (`hub`, `push`)."""
