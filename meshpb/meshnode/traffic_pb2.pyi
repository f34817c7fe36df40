from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServiceTraffic(_message.Message):
    __slots__ = ("service", "routes", "subsets", "traffic_policy", "virtual_service", "destination_rule")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    SUBSETS_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_POLICY_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_RULE_FIELD_NUMBER: _ClassVar[int]
    service: str
    routes: _containers.RepeatedCompositeFieldContainer[L4Route]
    subsets: _containers.RepeatedCompositeFieldContainer[Subset]
    traffic_policy: TrafficPolicy
    virtual_service: str
    destination_rule: str
    def __init__(self, service: _Optional[str] = ..., routes: _Optional[_Iterable[_Union[L4Route, _Mapping]]] = ..., subsets: _Optional[_Iterable[_Union[Subset, _Mapping]]] = ..., traffic_policy: _Optional[_Union[TrafficPolicy, _Mapping]] = ..., virtual_service: _Optional[str] = ..., destination_rule: _Optional[str] = ...) -> None: ...

class L4Route(_message.Message):
    __slots__ = ("kind", "destinations", "matches", "name")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TCP: _ClassVar[L4Route.Kind]
        TLS: _ClassVar[L4Route.Kind]
    TCP: L4Route.Kind
    TLS: L4Route.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: L4Route.Kind
    destinations: _containers.RepeatedCompositeFieldContainer[RouteDestination]
    matches: _containers.RepeatedCompositeFieldContainer[L4Match]
    name: str
    def __init__(self, kind: _Optional[_Union[L4Route.Kind, str]] = ..., destinations: _Optional[_Iterable[_Union[RouteDestination, _Mapping]]] = ..., matches: _Optional[_Iterable[_Union[L4Match, _Mapping]]] = ..., name: _Optional[str] = ...) -> None: ...

class L4Match(_message.Message):
    __slots__ = ("port", "destination_subnets", "source_labels", "source_namespace", "sni_hosts")
    class SourceLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_SUBNETS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LABELS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SNI_HOSTS_FIELD_NUMBER: _ClassVar[int]
    port: int
    destination_subnets: _containers.RepeatedScalarFieldContainer[str]
    source_labels: _containers.ScalarMap[str, str]
    source_namespace: str
    sni_hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, port: _Optional[int] = ..., destination_subnets: _Optional[_Iterable[str]] = ..., source_labels: _Optional[_Mapping[str, str]] = ..., source_namespace: _Optional[str] = ..., sni_hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class RouteDestination(_message.Message):
    __slots__ = ("service", "subset", "port", "weight")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SUBSET_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    service: str
    subset: str
    port: int
    weight: int
    def __init__(self, service: _Optional[str] = ..., subset: _Optional[str] = ..., port: _Optional[int] = ..., weight: _Optional[int] = ...) -> None: ...

class Subset(_message.Message):
    __slots__ = ("name", "labels", "traffic_policy")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_POLICY_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    traffic_policy: TrafficPolicy
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., traffic_policy: _Optional[_Union[TrafficPolicy, _Mapping]] = ...) -> None: ...

class TrafficPolicy(_message.Message):
    __slots__ = ("load_balancer", "connection_pool", "outlier_detection", "port_level")
    LOAD_BALANCER_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_POOL_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_DETECTION_FIELD_NUMBER: _ClassVar[int]
    PORT_LEVEL_FIELD_NUMBER: _ClassVar[int]
    load_balancer: LoadBalancer
    connection_pool: ConnectionPool
    outlier_detection: OutlierDetection
    port_level: _containers.RepeatedCompositeFieldContainer[PortTrafficPolicy]
    def __init__(self, load_balancer: _Optional[_Union[LoadBalancer, _Mapping]] = ..., connection_pool: _Optional[_Union[ConnectionPool, _Mapping]] = ..., outlier_detection: _Optional[_Union[OutlierDetection, _Mapping]] = ..., port_level: _Optional[_Iterable[_Union[PortTrafficPolicy, _Mapping]]] = ...) -> None: ...

class PortTrafficPolicy(_message.Message):
    __slots__ = ("port", "load_balancer", "connection_pool", "outlier_detection")
    PORT_FIELD_NUMBER: _ClassVar[int]
    LOAD_BALANCER_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_POOL_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_DETECTION_FIELD_NUMBER: _ClassVar[int]
    port: int
    load_balancer: LoadBalancer
    connection_pool: ConnectionPool
    outlier_detection: OutlierDetection
    def __init__(self, port: _Optional[int] = ..., load_balancer: _Optional[_Union[LoadBalancer, _Mapping]] = ..., connection_pool: _Optional[_Union[ConnectionPool, _Mapping]] = ..., outlier_detection: _Optional[_Union[OutlierDetection, _Mapping]] = ...) -> None: ...

class LoadBalancer(_message.Message):
    __slots__ = ("simple", "consistent_hash")
    class Simple(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNSPECIFIED: _ClassVar[LoadBalancer.Simple]
        LEAST_CONN: _ClassVar[LoadBalancer.Simple]
        RANDOM: _ClassVar[LoadBalancer.Simple]
        PASSTHROUGH: _ClassVar[LoadBalancer.Simple]
        ROUND_ROBIN: _ClassVar[LoadBalancer.Simple]
        LEAST_REQUEST: _ClassVar[LoadBalancer.Simple]
    UNSPECIFIED: LoadBalancer.Simple
    LEAST_CONN: LoadBalancer.Simple
    RANDOM: LoadBalancer.Simple
    PASSTHROUGH: LoadBalancer.Simple
    ROUND_ROBIN: LoadBalancer.Simple
    LEAST_REQUEST: LoadBalancer.Simple
    SIMPLE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    simple: LoadBalancer.Simple
    consistent_hash: ConsistentHash
    def __init__(self, simple: _Optional[_Union[LoadBalancer.Simple, str]] = ..., consistent_hash: _Optional[_Union[ConsistentHash, _Mapping]] = ...) -> None: ...

class ConsistentHash(_message.Message):
    __slots__ = ("use_source_ip", "minimum_ring_size")
    USE_SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_RING_SIZE_FIELD_NUMBER: _ClassVar[int]
    use_source_ip: bool
    minimum_ring_size: int
    def __init__(self, use_source_ip: _Optional[bool] = ..., minimum_ring_size: _Optional[int] = ...) -> None: ...

class ConnectionPool(_message.Message):
    __slots__ = ("max_connections", "connect_timeout_seconds")
    MAX_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    CONNECT_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    max_connections: int
    connect_timeout_seconds: float
    def __init__(self, max_connections: _Optional[int] = ..., connect_timeout_seconds: _Optional[float] = ...) -> None: ...

class OutlierDetection(_message.Message):
    __slots__ = ("consecutive_5xx_errors", "consecutive_gateway_errors", "interval_seconds", "base_ejection_time_seconds", "max_ejection_percent", "min_health_percent")
    CONSECUTIVE_5XX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_GATEWAY_ERRORS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BASE_EJECTION_TIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MIN_HEALTH_PERCENT_FIELD_NUMBER: _ClassVar[int]
    consecutive_5xx_errors: int
    consecutive_gateway_errors: int
    interval_seconds: float
    base_ejection_time_seconds: float
    max_ejection_percent: int
    min_health_percent: int
    def __init__(self, consecutive_5xx_errors: _Optional[int] = ..., consecutive_gateway_errors: _Optional[int] = ..., interval_seconds: _Optional[float] = ..., base_ejection_time_seconds: _Optional[float] = ..., max_ejection_percent: _Optional[int] = ..., min_health_percent: _Optional[int] = ...) -> None: ...

class EgressPolicy(_message.Message):
    __slots__ = ("namespace", "name", "mode", "listeners", "selector")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REGISTRY_ONLY: _ClassVar[EgressPolicy.Mode]
        ALLOW_ANY: _ClassVar[EgressPolicy.Mode]
    REGISTRY_ONLY: EgressPolicy.Mode
    ALLOW_ANY: EgressPolicy.Mode
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LISTENERS_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    mode: EgressPolicy.Mode
    listeners: _containers.RepeatedCompositeFieldContainer[EgressListener]
    selector: _containers.ScalarMap[str, str]
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., mode: _Optional[_Union[EgressPolicy.Mode, str]] = ..., listeners: _Optional[_Iterable[_Union[EgressListener, _Mapping]]] = ..., selector: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EgressListener(_message.Message):
    __slots__ = ("port", "hosts")
    PORT_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    port: int
    hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, port: _Optional[int] = ..., hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class WorkloadLabels(_message.Message):
    __slots__ = ("uid", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    UID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    uid: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, uid: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...
