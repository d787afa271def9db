"""Push and pull OCI artifacts with the ORAS Python SDK (`oras` on PyPI).

The interoperability client of tests/tests/oras_e2e.rs: an independent
implementation of the OCI distribution API (requests + the SDK's own
manifest building), never the registry's code. scripts/install-deps.sh
installs the SDK into a venv (pinned version); the test runs this file with
that venv's python.

    oras_client.py push HOST REPO:TAG ARTIFACT_TYPE FILE:MEDIATYPE...
        [--subject MEDIATYPE,DIGEST,SIZE] [--annotation K=V]...
    oras_client.py pull HOST REPO:TAG OUTDIR

`push` runs from the files' directory (the SDK only uploads files below the
working directory) and prints one JSON object: the digest the registry
answered (Docker-Content-Digest), its OCI-Subject header, and the manifest
the SDK sent. `pull` writes the layers under their titles and prints the
pulled paths and the manifest as JSON.
"""

import json
import sys

import oras.client
import oras.oci
import oras.provider
import oras.version


class ArtifactClient(oras.provider.Registry):
    """The SDK's client, with the manifest's `artifactType` set (OCI 1.1).

    oras-py 0.2.x builds the manifest itself and has no parameter for
    `artifactType`; overriding `upload_manifest` is the SDK's extension
    point for changing what it sends (its schema allows the field).
    """

    def __init__(self, artifact_type, **kw):
        super().__init__(**kw)
        self.artifact_type = artifact_type
        self.sent = None

    def upload_manifest(self, manifest, container):
        if self.artifact_type:
            manifest["artifactType"] = self.artifact_type
        self.sent = manifest
        return super().upload_manifest(manifest, container)


def push(host, target, artifact_type, args):
    files, annotations, subject = [], {}, None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--subject":
            media_type, digest, size = args[i + 1].split(",")
            subject = oras.oci.Subject(media_type, digest, int(size))
            i += 2
        elif a == "--annotation":
            k, v = args[i + 1].split("=", 1)
            annotations[k] = v
            i += 2
        else:
            files.append(a)
            i += 1
    client = ArtifactClient(artifact_type, hostname=host, insecure=True)
    resp = client.push(
        target=f"{host}/{target}",
        files=files,
        manifest_annotations=annotations or None,
        subject=subject,
        quiet=True,
    )
    print(
        json.dumps(
            {
                "status": resp.status_code,
                "digest": resp.headers.get("Docker-Content-Digest"),
                "oci_subject": resp.headers.get("OCI-Subject"),
                "manifest": client.sent,
                "sdk_version": oras.version.__version__,
            }
        )
    )


def pull(host, target, outdir):
    client = oras.client.OrasClient(hostname=host, insecure=True)
    files = client.pull(target=f"{host}/{target}", outdir=outdir)
    manifest = client.get_manifest(f"{host}/{target}")
    print(json.dumps({"files": files, "manifest": manifest}))


def main(argv):
    if len(argv) >= 5 and argv[1] == "push":
        push(argv[2], argv[3], argv[4], argv[5:])
    elif len(argv) == 5 and argv[1] == "pull":
        pull(argv[2], argv[3], argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
