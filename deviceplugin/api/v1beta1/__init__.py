"""Generated Device Plugin API v1beta1 (package `v1beta1`): `api_pb2`, `api_pb2_grpc`."""
