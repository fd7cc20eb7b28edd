"""The card readers: PC/SC through pcscd (:mod:`readers.pcsc`) and the virtual readers that put
the project's card emulator behind the real PC/SC stack (:mod:`readers.virtual`: vsmartcard's
vpcd driver, a private pcscd per stack).

The reader port itself (:class:`cardspec.reader.Reader`, and the in-process reader that talks
to an emulated card directly) stays in ``cardspec``: card operations are written against it.
``readers`` sits above ``hsm`` and ``cardspec`` and beside ``printers``: neither knows the
other; the encoding stations that join a reader, the HSM and a printed face belong to
production (:mod:`issuance.batches.stations`).
"""
