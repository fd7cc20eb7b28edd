"""An independent terminal: replays the APDU sequences of public reader code against a card in
a PC/SC reader and checks each answer. It imports no project code (only pyscard and the
standard library) and sends each command byte for byte as the cited source sends it: no
automatic GET RESPONSE, no retry with a corrected Le.

    python terminal.py --reader "Virtual PCD 0 00 00" vectors/*.json [--transcript out.txt]

Vector files are JSON (see README.md in this directory): ``source`` names the public code the
sequence comes from, ``steps`` the commands with the status word (a regular expression over
4 hex digits) and, optionally, the data (a regular expression over upper-case hex) expected.
A step's ``apdu`` may contain ``{name}`` placeholders filled from earlier steps' ``save``
(a regular expression with one group over the previous response's hex data), e.g. the
length of a 61xx status for GET RESPONSE, or a PAN for a later command. Exit status 0 when every
step matched, 1 otherwise; the transcript shows every exchange.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from smartcard.System import readers


def run_vector(connection, vector: dict) -> tuple[list[str], bool]:  # type: ignore[no-untyped-def]
    lines = [f"# {vector['name']}", f"# source: {vector['source']['cite']}"]
    saved: dict[str, str] = {}
    ok = True
    for step in vector["steps"]:
        try:
            apdu_hex = step["apdu"].replace(" ", "").format(**saved).upper()
        except KeyError as missing:  # an earlier answer did not give the value: not sent
            ok = False
            lines.append(f"BAD > {step['apdu']}  (not sent: no {missing} from the answers)")
            continue
        data, sw1, sw2 = connection.transmit(list(bytes.fromhex(apdu_hex)))
        data_hex = bytes(data).hex().upper()
        sw = f"{sw1:02X}{sw2:02X}"
        good = re.fullmatch(step["sw"], sw) is not None
        if "data" in step:
            good = good and re.fullmatch(step["data"], data_hex) is not None
        if "save" in step:
            for name, pattern in step["save"].items():
                m = re.fullmatch(pattern, data_hex + sw)
                if m is None:
                    good = False
                    saved.pop(name, None)  # a later step needing it is not sent
                else:
                    saved[name] = m.group(1)
        ok = ok and good
        mark = "ok " if good else "BAD"
        note = f"  ({step['what']})" if "what" in step else ""
        lines.append(f"{mark} > {apdu_hex}{note}")
        lines.append(f"    < {data_hex} {sw}" if data_hex else f"    < {sw}")
        if not good:
            wanted = f" data {step['data']}" if "data" in step else ""
            lines.append(f"    expected SW {step['sw']}{wanted}")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reader", required=True)
    parser.add_argument("--transcript", type=Path)
    parser.add_argument("vectors", nargs="+", type=Path)
    args = parser.parse_args(argv)
    found = [r for r in readers() if str(r) == args.reader]
    if not found:
        print(f"no reader {args.reader!r}", file=sys.stderr)
        return 2
    out: list[str] = []
    all_ok = True
    for path in args.vectors:
        vector = json.loads(path.read_text(encoding="utf-8"))
        connection = found[0].createConnection()
        connection.connect()  # a fresh card session (power-on state) per sequence
        try:
            lines, ok = run_vector(connection, vector)
        finally:
            connection.disconnect()
        out += [*lines, ""]
        all_ok = all_ok and ok
    own = sorted(m for m in sys.modules if m.split(".")[0] in ("cardspec", "issuance", "hsm"))
    if own:
        out.append(f"project modules were imported: {own}")
        all_ok = False
    text = "\n".join(out)
    if args.transcript:
        args.transcript.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
