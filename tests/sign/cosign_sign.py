#!/usr/bin/env python3
"""A cosign key-pair signer written independently of the agent (Python
`cryptography`, OpenSSL underneath), for tests/tests/trust_e2e.rs.

  cosign_sign.py keygen DIR
      DIR/cosign.key (PKCS#8 PEM, unencrypted) and DIR/cosign.pub (PEM
      SubjectPublicKeyInfo, as `cosign generate-key-pair` writes it).
  cosign_sign.py sign KEY DOCKER_REFERENCE MANIFEST_DIGEST [KEY=VALUE...]
      Prints {"payload": <the simple-signing payload>, "signature": <base64
      ASN.1 DER ECDSA P-256 SHA-256 signature over the payload bytes>}; the
      KEY=VALUE pairs go into "optional", as `cosign sign -a KEY=VALUE`.

The payload is cosign's: critical.identity.docker-reference,
critical.image.docker-manifest-digest, critical.type = "cosign container
image signature", optional (null when empty), compact JSON in that order.
"""

import base64
import json
import os
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def keygen(out_dir):
    key = ec.generate_private_key(ec.SECP256R1())
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "cosign.key"), "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(os.path.join(out_dir, "cosign.pub"), "wb") as f:
        f.write(
            key.public_key().public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
        )


def sign(key_path, reference, digest, annotations):
    with open(key_path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    optional = dict(a.split("=", 1) for a in annotations) or None
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": optional,
        },
        separators=(",", ":"),
    )
    signature = key.sign(payload.encode(), ec.ECDSA(hashes.SHA256()))
    json.dump(
        {"payload": payload, "signature": base64.b64encode(signature).decode()},
        sys.stdout,
    )


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "keygen":
        keygen(sys.argv[2])
    elif len(sys.argv) >= 5 and sys.argv[1] == "sign":
        sign(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
