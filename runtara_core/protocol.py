"""Names every part agrees on: the ALPN of each service."""

INSTANCE_ALPN = "runtara-instance/1"
MANAGEMENT_ALPN = "runtara-mgmt/1"
