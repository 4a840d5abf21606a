"""grpc.health.v1 client messages for Python tools and tests.

Debian's python3-grpcio does not ship the grpcio-health-checking stubs, and no health.proto file is
packaged, so the two standard messages (grpc/health/v1/health.proto, unchanged since 2016) are
declared here as a descriptor and turned into classes by protobuf itself.
"""

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool

try:  # protobuf >= 4
    from google.protobuf.message_factory import GetMessageClass as _message_class
except ImportError:  # protobuf 3.x in Debian 12
    from google.protobuf import message_factory as _mf

    _factory = _mf.MessageFactory()

    def _message_class(descriptor):
        return _factory.GetPrototype(descriptor)


def _build():
    f = descriptor_pb2.FileDescriptorProto(
        name="peerpath_tools/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3")
    req = f.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    resp = f.message_type.add(name="HealthCheckResponse")
    enum = resp.enum_type.add(name="ServingStatus")
    for number, name in enumerate(["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]):
        enum.value.add(name=name, number=number)
    resp.field.add(name="status", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
                   type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
                   label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return (_message_class(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
            _message_class(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")))


HealthCheckRequest, HealthCheckResponse = _build()
SERVING = 1
NOT_SERVING = 2


def check(channel: grpc.Channel, service: str = "", timeout: float = 2.0) -> int:
    """Returns the ServingStatus number of `service` ("" = the whole server)."""
    call = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString)
    return call(HealthCheckRequest(service=service), timeout=timeout).status
