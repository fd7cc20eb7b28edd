"""Issuer keys in a PKCS#11 HSM: ceremonies, per-card derivation, cryptograms, export.

Port and adapters: :mod:`hsm.service` (``KeyService``, ``Pkcs11KeyService``,
``SoftwareKeyService``); ceremonies: :mod:`hsm.ceremony`; CLI: :mod:`yikatong.cli.hsm`.
"""
