"""What the tests of several stages share: training and export of tiny models, servers, captures,
crops, a stand-in for Triton's Python-backend utilities and a fake TensorRT."""
