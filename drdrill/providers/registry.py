"""The provider families, one line each: the family's name and its drill-format module.

Adding a provider is a package drdrill/providers/<family>/ with `schema.py` (its targets, probe,
selection keys, id fields, permit key and endpoint fields; pure models, no SDK) and `provider.py`
(its Provider class, named by the schema's PROVIDER), plus one line here. drdrill/providers/spec.py
assembles DrillSpec from these modules, in this order (the order errors list the providers in).
Nothing else names a family: tests/test_provider_schema.py checks it."""

from __future__ import annotations

FAMILIES: dict[str, str] = {
    "postgres": "drdrill.providers.postgres.schema",
    "aws": "drdrill.providers.aws.schema",
    "azure": "drdrill.providers.azure.schema",
    "gcp": "drdrill.providers.gcp.schema",
    "sim": "drdrill.providers.sim.schema",
}
