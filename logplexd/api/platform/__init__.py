"""The Heroku Platform API v3 resources that sit on top of Logplex: apps, log drains and
log sessions, served on the control API's listener (``mount_platform``)."""

from .api import OPERATOR_EMAIL, OPERATOR_ID, PlatformApi, drain_uuid, mount_platform
from .conventions import ApiError, RangeSpec, TokenBuckets, paginate, parse_range

__all__ = [
    "OPERATOR_EMAIL",
    "OPERATOR_ID",
    "ApiError",
    "PlatformApi",
    "RangeSpec",
    "TokenBuckets",
    "drain_uuid",
    "mount_platform",
    "paginate",
    "parse_range",
]
