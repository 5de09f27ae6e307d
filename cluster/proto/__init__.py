"""Generated protobuf and gRPC stubs (see tools/gen_proto.py); do not edit by hand."""
