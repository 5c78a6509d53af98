"""Approvals are signed by the approver (issue 22): an answer at a gate counts only when it is signed
with the SSH key of one of the gate's approvers. Keys are made by the real ssh-keygen in the test's
own directory; drills run on the session's real Temporal dev server; the CLI is the real `drdrill`.

Every refused answer is kept: a warning finding and an `approval-refused` event saying who claimed
what and why it was refused. The evidence keeps each accepted answer's payload and signature, and
the real `ssh-keygen -Y verify` accepts them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from app.approval_sign import SigningError, sign, signed_request
from drdrill.core import approvals, sshsig
from drdrill.core.approvals import ApprovalPayload, Refused
from drdrill.core.planspec import ApprovalGate, Approver
from drdrill.core.schema import SpecError
from drdrill.providers.spec import parse_spec
from drdrill.providers.sim.provider import SimProvider
from tests.sim_harness import leaked
from workflows.drill import DrillWorkflow
from tests.test_plan import approvers, drdrill, events, group, keys, run_drill, sim_plan, sim_state, ssh_key, wait_for_phase  # noqa: F401


async def at_gate(handle, group: str, timeout: float = 120.0) -> None:
    """Until the drill waits at the gate before `group` (its status query, polled: never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        gate = (await handle.query(DrillWorkflow.status)).approval
        if gate is not None and gate.group == group:
            return
        assert loop.time() < deadline, f"the drill never waited before group {group}"
        await asyncio.sleep(0.05)


def refusal_of(exc: WorkflowUpdateFailedError) -> tuple[str, str]:
    return exc.cause.type, exc.cause.message  # type: ignore[union-attr]


def ssh_keygen_verifies(folder: Path, name: str, public: str, payload: str, signature: str) -> subprocess.CompletedProcess:
    """What an auditor runs: `ssh-keygen -Y verify` with an allowed_signers file, the signature and the payload."""
    allowed, sig = folder / "allowed_signers", folder / f"{name}.sig"
    allowed.write_text(f"{name} {public}\n")
    sig.write_text(signature + "\n")
    cmd = ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", name, "-n", "drdrill-approval", "-s", str(sig)]
    return subprocess.run(cmd, input=payload, capture_output=True, text=True)


def test_only_an_answer_signed_by_an_approvers_key_opens_a_gate_and_every_refusal_is_recorded(temporal_server, tmp_path, sim_state, keys):
    address = temporal_server.address
    gates = (
        f"approve:\n  - {{before: data, timeout: 10m, approvers: {approvers(keys, 'alice', 'bob')}}}\n"
        f"  - {{before: app, timeout: 10m, approvers: {approvers(keys, 'alice', 'bob')}}}"
    )
    spec = parse_spec(sim_plan("signed-gates", gate=gates), "<test>")
    alice, bob, mallory = keys["alice"][0], keys["bob"][0], keys["mallory"][0]
    refused: dict[str, tuple[str, str]] = {}
    answers: dict = {}

    async def answer(client, handle) -> None:
        await wait_for_phase(handle, "waiting for approval")

        async def send(what: str, request) -> None:
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await handle.execute_update("approve", request)
            refused[what] = refusal_of(err.value)

        # Anyone who reaches Temporal: an update that only says who it is.
        await send("unsigned", {"by": "alice"})
        # mallory signs, with her own key, an answer claiming to be alice's.
        await send("unlisted key", await asyncio.to_thread(signed_request, handle.id, "data", "approve", "", str(mallory), "alice"))
        # alice's real signature, for another drill.
        await send("other drill", await asyncio.to_thread(signed_request, "another-drill-1", "data", "approve", "", str(alice), "alice"))
        first = await asyncio.to_thread(signed_request, handle.id, "data", "approve", "data looks right", str(alice), "alice")
        answers["first"] = await handle.execute_update("approve", first)
        # At the next gate, alice's first answer (its signed payload and signature) sent again.
        await at_gate(handle, "app")
        await send("replayed", first.model_copy(update={"group": None}))
        answers["cli"] = await asyncio.to_thread(drdrill, address, "approve", handle.id, "--note", "app may start", user="bob", key=bob)

    result, _ = run_drill(address, tmp_path, spec, {"sim": SimProvider(sim_state, speed=1.0)}, during=answer)

    assert refused["unsigned"][0] == "APPROVAL_UNSIGNED"
    assert refused["unlisted key"][0] == "APPROVAL_UNKNOWN_KEY"
    assert refused["unlisted key"][1] == f"key {sshsig.parse_public_key(keys['mallory'][1]).fingerprint} is not one of the gate's approvers' keys"
    assert refused["other drill"] == ("APPROVAL_OTHER_DRILL", f"the answer was signed for drill another-drill-1, not {result.drill_id}")
    assert refused["replayed"][0] == "APPROVAL_REPLAYED"
    assert answers["cli"].returncode == 0, answers["cli"].stderr
    assert answers["cli"].stdout.startswith(f"{result.drill_id}: group app approved by bob at ")

    # Refused answers left the plan waiting; the signed ones moved it on.
    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert [(g.group, g.approval.decision, g.approval.by) for g in result.groups] == [("data", "approved", "alice"), ("app", "approved", "bob")]
    # Each refusal is recorded: who claimed, what was refused and why.
    warnings = [(f.code, f.severity) for f in result.findings if f.code.startswith("APPROVAL_")]
    assert warnings == [(code, "warning") for code in ("APPROVAL_UNSIGNED", "APPROVAL_UNKNOWN_KEY", "APPROVAL_OTHER_DRILL", "APPROVAL_REPLAYED")]
    recorded = [e for e in result.timeline if e.phase == "approval-refused"]
    assert [(e.data["code"], e.data["claimed_by"], e.outcome) for e in recorded] == [
        ("APPROVAL_UNSIGNED", "alice", "FAILED"), ("APPROVAL_UNKNOWN_KEY", "alice", "FAILED"),
        ("APPROVAL_OTHER_DRILL", "alice", "FAILED"), ("APPROVAL_REPLAYED", "alice", "FAILED"),
    ]
    assert "an answer to approve claiming to be from alice was refused (APPROVAL_UNSIGNED)" in recorded[0].detail

    # The evidence keeps each answer's payload and signature, and ssh-keygen -Y verify accepts them.
    evidence = json.loads((tmp_path / "runs" / result.drill_id / "evidence.json").read_text())
    for kept, name in zip(evidence["groups"], ("alice", "bob")):
        approval = kept["approval"]
        assert (approval["by"], approval["signer"]) == (name, name)
        assert json.loads(approval["payload"])["drill_id"] == result.drill_id
        proc = ssh_keygen_verifies(tmp_path, name, keys[name][1], approval["payload"], approval["signature"])
        assert proc.returncode == 0 and f'Good "drdrill-approval" signature for {name}' in proc.stdout, proc.stdout + proc.stderr
    # A payload changed afterwards no longer verifies.
    approval = evidence["groups"][0]["approval"]
    forged = approval["payload"].replace("data looks right", "data looks wrong")
    assert ssh_keygen_verifies(tmp_path, "alice", keys["alice"][1], forged, approval["signature"]).returncode != 0
    assert leaked(sim_state) == []


# ------------------------------------------------------------------ the rules, without a workflow

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _check(payload: ApprovalPayload, key: Path, approvers_: list[Approver], *, now=NOW, used=(), signature=None) -> approvals.Accepted:
    text = payload.text()
    return approvals.check(
        text, signature if signature is not None else sign(text, str(key)), drill_id="d-1", group="app", decision="approve",
        approvers=approvers_, asked=NOW - timedelta(minutes=5), until=NOW + timedelta(hours=1), now=now, used_nonces=used,
    )


def _payload(**changes) -> ApprovalPayload:
    return ApprovalPayload(**{"drill_id": "d-1", "group": "app", "decision": "approve", "time": NOW, "nonce": "n" * 32, **changes})


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_ed25519_ecdsa_and_rsa_signatures_verify_and_a_changed_message_does_not(tmp_path, kind):
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(tmp_path / "k")], check=True)
    public = (tmp_path / "k.pub").read_text()
    signature = sign("the message", str(tmp_path / "k"))
    assert sshsig.verify(signature, b"the message", "drdrill-approval") == sshsig.parse_public_key(public)
    with pytest.raises(sshsig.SignatureError, match="does not match the message"):
        sshsig.verify(signature, b"the message!", "drdrill-approval")
    with pytest.raises(sshsig.SignatureError, match="namespace 'drdrill-approval', not 'git'"):
        sshsig.verify(signature, b"the message", "git")


def test_the_rules_of_a_signed_answer(tmp_path, keys):
    alice = Approver(name="alice", key=keys["alice"][1])
    accepted = _check(_payload(note="ok"), keys["alice"][0], [alice])
    assert (accepted.by, accepted.signer.name, accepted.payload.note) == ("alice", "alice", "ok")

    def refused(payload, **kw) -> str:
        with pytest.raises(Refused) as err:
            _check(payload, keys["alice"][0], [alice], **kw)
        return err.value.code

    assert refused(_payload(group="data")) == "APPROVAL_OTHER_GROUP"
    assert refused(_payload(decision="reject")) == "APPROVAL_OTHER_DECISION"
    assert refused(_payload(time=NOW - timedelta(hours=1))) == "APPROVAL_OUT_OF_WINDOW"  # before the gate asked
    assert refused(_payload(time=NOW + timedelta(minutes=30))) == "APPROVAL_OUT_OF_WINDOW"  # in the future
    assert refused(_payload(), now=NOW + timedelta(minutes=30)) == "APPROVAL_STALE"  # kept back, sent later
    assert refused(_payload(), used=["n" * 32]) == "APPROVAL_REPLAYED"
    assert refused(_payload(), signature="-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----") == "APPROVAL_BAD_SIGNATURE"
    assert refused(_payload(on_behalf_of="bob")) == "APPROVAL_NOT_A_CONSOLE"


def test_a_console_signs_on_behalf_of_an_approver_it_authenticated(tmp_path, keys):
    console_key, console_public = ssh_key(tmp_path, "console")
    listed = [Approver(name="alice", key=keys["alice"][1]), Approver(name="web-console", key=console_public, role="console")]
    accepted = _check(_payload(on_behalf_of="alice"), console_key, listed)
    assert (accepted.by, accepted.signer.name) == ("alice", "web-console")
    for on_behalf_of, code in ((None, "APPROVAL_CONSOLE_FOR_NOBODY"), ("mallory", "APPROVAL_NOT_AN_APPROVER")):
        with pytest.raises(Refused) as err:
            _check(_payload(on_behalf_of=on_behalf_of), console_key, listed)
        assert err.value.code == code


def test_approvers_come_from_an_allowed_signers_file_beside_the_drill(tmp_path, keys):
    (tmp_path / "approvers").write_text(f"# the shop's on-call leads\nalice,alice@example.com {keys['alice'][1]}\nbob {keys['bob'][1]}\n")
    text = sim_plan("from-file", gate="approve: {before: app, approvers_file: approvers}")
    spec = parse_spec(text, str(tmp_path / "drill.yaml"), base_dir=tmp_path)
    assert spec.approve[0].names == ["alice", "alice@example.com", "bob"]
    assert spec.approve[0].approvers[2].key == " ".join(keys["bob"][1].split()[:2])
    (tmp_path / "approvers").write_text("alice\n")
    with pytest.raises(SpecError) as err:
        parse_spec(text, str(tmp_path / "drill.yaml"), base_dir=tmp_path)
    assert err.value.problems == [
        ("approve[0].approvers_file", "line 1: expected `principal ssh-ed25519 AAAA…` (options are not supported): "
         "write one approver a line, `alice ssh-ed25519 AAAA…` (git's allowed_signers format)")
    ]


def test_signing_without_a_key_says_what_to_do(tmp_path):
    with pytest.raises(SigningError, match="no SSH key at .*: pass --key PATH"):
        sign("x", str(tmp_path / "absent"))


def test_evidence_recorded_before_approvals_were_signed_still_reads_but_no_answer_matches_a_keyless_approver(keys):
    """Old records name approvers without keys: they load (reports, comparisons with earlier runs),
    a drill file written so is refused by lint (tests/test_plan.py), and no signature matches them."""
    gate = ApprovalGate.model_validate({"before": "app", "approvers": ["alice"]})
    assert gate.names == ["alice"] and gate.approvers[0].key == ""
    with pytest.raises(Refused) as err:
        _check(_payload(), keys["alice"][0], gate.approvers)
    assert err.value.code == "APPROVAL_UNKNOWN_KEY"


def test_a_key_held_by_ssh_agent_signs_through_its_public_half(tmp_path, monkeypatch):
    """`drdrill approve --key ~/.ssh/id_ed25519.pub` with SSH_AUTH_SOCK: the agent signs; the private key file is not needed."""
    key, public = ssh_key(tmp_path, "carol")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():  # the agent listening is the condition; polled
            assert agent.poll() is None and time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.02)  # allowed: polling interval while ssh-agent creates its socket
        env = {"SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(key)], check=True, capture_output=True, env={**os.environ, **env})
        key.unlink()  # from here only the agent holds it
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        signature = sign("the message", f"{key}.pub")
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    assert sshsig.verify(signature, b"the message", "drdrill-approval") == sshsig.parse_public_key(public)
    monkeypatch.delenv("SSH_AUTH_SOCK")
    with pytest.raises(SigningError, match="is a public key: signing with it needs ssh-agent"):
        sign("x", f"{key}.pub")


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_a_drill_answered_before_approvals_were_signed_still_replays():
    """A drill whose gate was answered by name (drdrill before this change) replays on a new worker
    without a nondeterminism error: the answer in its history is taken again (workflow.patched).
    The history was recorded from the previous release's code: a sim plan with approvers [alice, bob],
    approved with ApprovalRequest(by="alice"), PASSED."""
    history = WorkflowHistory.from_json("gate-before-signing-1", (FIXTURES / "gate-history-before-signing.json").read_text())
    runner = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules("pydantic", "yaml", "drdrill", "activities"))
    replayer = Replayer(workflows=[DrillWorkflow], data_converter=pydantic_data_converter, workflow_runner=runner)
    result = asyncio.run(replayer.replay_workflow(history, raise_on_replay_failure=False))
    assert result.replay_failure is None


def test_a_flood_of_refused_answers_is_recorded_up_to_a_bound(temporal_server, tmp_path, sim_state, keys):
    """Anyone who reaches Temporal can send answers; each refusal is written to the history, so
    after MAX_REFUSED_ANSWERS no more are taken or recorded, and a signed answer still opens the gate."""
    from workflows.plan import MAX_REFUSED_ANSWERS

    spec = parse_spec(sim_plan("refusal-flood", gate=f"approve: {{before: app, timeout: 10m, approvers: {approvers(keys, 'alice')}}}"), "<test>")
    codes: list[str] = []

    async def flood(client, handle) -> None:
        await wait_for_phase(handle, "waiting for approval")
        for _ in range(MAX_REFUSED_ANSWERS + 2):
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await handle.execute_update("approve", {"by": "alice"})
            codes.append(refusal_of(err.value)[0])
        await handle.execute_update("approve", await asyncio.to_thread(signed_request, handle.id, "app", "approve", "", str(keys["alice"][0]), "alice"))

    result, _ = run_drill(temporal_server.address, tmp_path, spec, {"sim": SimProvider(sim_state, speed=1.0)}, during=flood)

    assert codes == ["APPROVAL_UNSIGNED"] * MAX_REFUSED_ANSWERS + ["TOO_MANY_REFUSED"] * 2
    assert len([e for e in result.timeline if e.phase == "approval-refused"]) == MAX_REFUSED_ANSWERS
    assert result.verdict == "PASSED" and group(result, "app").approval.by == "alice"
