"""Validations: prove the restored data and services are really back.

run.py runs one check (`run_validation`); data.py holds the data checks (sql, row_count, checksum,
freshness, volume, boundary), service.py the service checks (tcp, http, command), common.py what
they share. What a check takes is drdrill.providers.activity_io.ValidateInput.
"""
