"""Generated PodResources API v1 (package `v1`): `api_pb2`, `api_pb2_grpc`."""
