"""The witness (`ffaudit witness serve`): a C2SP tlog-witness server that cosigns the
checkpoints of the logs it is configured with, and the client the audit service submits its
checkpoints to witnesses with (`audit.witness.client`, which imports no server part).

A deployable of its own beside the audit service: its settings (`FFWITNESS_`), its app
(`audit.witness.app.create_app`) and one table of the control schema, `witness_logs`.
"""
