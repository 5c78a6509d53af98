"""drdrill: disaster-recovery drills on Temporal."""

__version__ = "0.1.0"
