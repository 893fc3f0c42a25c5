"""An independent OCI client for tests/it/oci.rs: oras (PyPI), over plain
HTTP to the test's own registry. Its answer is one JSON object on the last
line of standard output (oras prints progress before it).

  oci_client.py push HOST/REPO:TAG FILE MEDIA_TYPE CONFIG_MEDIA_TYPE
  oci_client.py pull HOST/REPO:TAG OUTDIR
  oci_client.py manifest HOST/REPO:TAG
  oci_client.py bcrypt PASSWORD      (an htpasswd hash for the registry)
"""

import json
import os
import sys
import tempfile

import oras.client


def client():
    return oras.client.OrasClient(insecure=True)


def main(argv):
    command, target = argv[1], argv[2]
    if command == "bcrypt":
        import bcrypt

        hashed = bcrypt.hashpw(target.encode(), bcrypt.gensalt(rounds=5))
        print(json.dumps({"hash": hashed.decode()}))
    elif command == "push":
        path, media_type, config_type = argv[3], argv[4], argv[5]
        with tempfile.TemporaryDirectory() as tmp:
            config = os.path.join(tmp, "config.json")
            with open(config, "w") as f:
                json.dump({"architecture": "wasm", "os": "wasip2"}, f)
            response = client().push(
                target=target,
                files=[f"{path}:{media_type}"],
                manifest_config=f"{config}:{config_type}",
                disable_path_validation=True,
            )
        print(json.dumps({"status": response.status_code}))
    elif command == "pull":
        files = client().pull(target=target, outdir=argv[3])
        print(json.dumps({"files": files}))
    elif command == "manifest":
        print(json.dumps(client().get_manifest(target)))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
