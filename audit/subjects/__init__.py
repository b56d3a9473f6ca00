"""GDPR erasure without breaking the chain: the subject vault (crypto-shredding).

Records sealed with a vault carry, for identifying kinds (user ids, e-mail addresses), a
pseudonym under a random per-subject secret instead of the tenant keyring. The vault is the
only place that links a raw id to that secret; erasing the subject destroys the entry, so
the records stay byte-for-byte intact (every chain still verifies) while nobody, keyring
holders included, can link the raw id to them any more. docs/record-spec.md §11.

Submodules: `protocol` (the contract Pseudonymizer uses), `cache` (the sealer's bounded TTL
cache), `vault` (the SQL implementation), `service`/`routes`/`schemas`/`repository` (the
erasure API and its queries).
"""
