"""Measuring: export ops and networks to ONNX and time them on devices (runners, protocol, farm, RPC)."""
