"""`drdrill check …`: read a restored resource back from its cloud, for `command` validations.

A `command` validation (drdrill/validation/service.py) runs one of these with the restored resource's
endpoint as DRDRILL_* variables, e.g. in a drill file:

    - {name: volume-restored, type: command, target: orders-data, argv: [drdrill, check, aws-volume]}

Each proves what the cloud's API can prove: the resource exists, is usable, came from the chosen
recovery point, sits in the drill's isolated network and carries the drill's tags. None reads the
data itself (that needs an agent on an instance: add your own command for that).

It prints one line saying what it found, then each problem on stderr. Exit status: 0 all good, 1 a
problem, 2 the endpoint variables it needs are missing (not run as a validation of such a target),
3 the cloud could not be read. Registered by app.cli.main() through `register(app)`.
"""

from __future__ import annotations

import os

import typer

from drdrill.core.errors import ProviderError

check_app = typer.Typer(no_args_is_help=True, help="Read a restored resource back from its cloud (for `command` validations).")


def _run(required: str, kind: str) -> None:
    """Run one AWS check against the endpoint in the environment and exit with its status."""
    env = dict(os.environ)
    if not env.get(required):
        typer.echo(f"{required} is not set: run `drdrill check` as a `command` validation of an {kind} target", err=True)
        raise typer.Exit(2)
    # Imported here, not at the top: every `drdrill` command registers this group, and only an AWS
    # check needs the AWS SDK loaded.
    from drdrill.providers.aws.provider import read_back

    try:
        summary, problems = read_back(kind, env)
    except (ProviderError, LookupError) as exc:
        typer.echo(f"could not read the restored resource: {getattr(exc, 'message', exc)}", err=True)
        raise typer.Exit(3)
    typer.echo(summary)
    for problem in problems:
        typer.echo(problem, err=True)
    raise typer.Exit(1 if problems else 0)


@check_app.command("aws-volume")
def aws_volume() -> None:
    """An aws.ebs restore: the volume is usable, from the expected snapshot, no smaller, tagged.

    Reads DRDRILL_VOLUME_ID, DRDRILL_EXPECTED_SNAPSHOT_ID, DRDRILL_REGION, DRDRILL_AWS_ENDPOINT_URL."""
    _run("DRDRILL_VOLUME_ID", "aws.ebs")


@check_app.command("aws-instance")
def aws_instance() -> None:
    """An aws.ec2 restore: running, private, in the drill's security group, data from the point.

    No public address, no security group but the drill's, each data volume restored from the chosen
    point's snapshot. Reads DRDRILL_INSTANCE_ID, DRDRILL_SECURITY_GROUP_ID, DRDRILL_DATA_SNAPSHOT_IDS, DRDRILL_REGION."""
    _run("DRDRILL_INSTANCE_ID", "aws.ec2")


@check_app.command("aws-db")
def aws_db() -> None:
    """An aws.rds restore: the DB instance is available and not publicly accessible.

    Reads DRDRILL_DB_INSTANCE_IDENTIFIER, DRDRILL_REGION, DRDRILL_AWS_ENDPOINT_URL."""
    _run("DRDRILL_DB_INSTANCE_IDENTIFIER", "aws.rds")


def register(app: typer.Typer) -> None:
    app.add_typer(check_app, name="check")
