"""AWS provider: EBS volumes, EC2 instances and RDS DB instances restored into a per-drill VPC.

Targets
- aws.ebs (ebs.py): a volume's snapshots -> a new volume in the isolated environment's availability zone.
- aws.ec2 (ec2.py): snapshot sets of an instance's volumes (or an AMI) -> a new instance in the
  isolated subnet; the boot disk comes from an AMI registered from the root snapshot (or
  `image_id`), the data volumes from the same recovery point.
- aws.rds (rds.py): a DB snapshot (manual or automated) -> restore_db_instance_from_db_snapshot, or
  with rule `at` and `point_in_time: true` -> restore_db_instance_to_point_in_time. Never publicly
  accessible.

Isolation (isolation.py): one VPC per drill with no internet gateway, NAT, peering, VPC endpoint,
VPN or transit gateway attachment; private subnets in two availability zones (RDS needs two); a
security group without any egress rule and ingress only from the sources the spec names for validation.
The worker cannot reach it; `isolation.probe.aws` (probe.py) boots an instance inside it that runs
the checks, with one egress rule out, to the Temporal frontend, and reads its secrets (secrets.py).

Every created resource carries the drill's tags at creation (TagSpecifications / Tags). Creation is
idempotent: deterministic names (drdrill-<drill id>-<target>) where AWS names resources, ClientToken
where a call takes one, and a lookup by tag before every create (an emulator may ignore the token).

Selections and coverage (discover.py): volumes, instances and DB instances by tag across regions,
with their recovery points' times (read-only).

Cleaning up (primitives.py): the inventory finds resources by drdrill's tag; the base class tears
down in DELETE_ORDER, lists and deletes orphans, and refuses anything that lacks the drill's tag.

Every API call goes through a botocore `before-call` hook that records the IAM action
(`CALLED_ACTIONS`); tests compare it with deploy/aws/iam-policy.json. `drdrill check aws-volume`
(aws-instance, aws-db) reads a restored resource back for a `command` validation (provider.py `read_back`).

The package's modules: schema.py (its part of the drill format, read without any SDK: see
drdrill/providers/registry.py) and provider.py (AwsProvider, imported only by a worker that drills aws).
"""
