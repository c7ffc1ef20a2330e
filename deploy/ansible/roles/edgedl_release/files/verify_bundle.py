"""Check every file of a copied bundle against its manifest.json (sha256), with the device's python3 only."""
import hashlib
import json
import os
import sys

d = sys.argv[1]
try:
    files = json.load(open(os.path.join(d, "manifest.json")))["files"]
except (OSError, ValueError, KeyError) as exc:
    print("bundle manifest unreadable: %s" % exc)
    sys.exit(3)
for name in sorted(files):
    if ".." in name.split("/") or name.startswith("/"):
        print("unsafe path %s" % name)
        sys.exit(3)
    h = hashlib.sha256()
    try:
        with open(os.path.join(d, name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        print("missing %s" % name)
        sys.exit(3)
    if h.hexdigest() != files[name]:
        print("sha256 mismatch %s" % name)
        sys.exit(3)
