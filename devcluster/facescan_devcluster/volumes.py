"""What a pod's container is started with: command, environment, identity and mounts.

Called by pod.PodRunner before each start. Reads what the pod references through the API
as its Node (the Node authorizer lets a node read only the Secrets, ConfigMaps, PVCs and
PVs of pods bound to it): env values with $(VAR) references, ``valueFrom`` Secrets,
ConfigMaps, fields and resources, ``envFrom``; volumes: a PVC resolved to its bound PV's
hostPath or local path (a user's NFS or CSI volume, as a host folder), emptyDir,
hostPath, ConfigMap, Secret, and projected (service-account token, ConfigMap,
downwardAPI). A reference that does not resolve raises ConfigError, which the kubelet
reports as CreateContainerConfigError and retries.
"""

from __future__ import annotations

import base64
import fnmatch
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facescan_devcluster.nodeagent import Api

Obj = dict[str, Any]
BASE_PATH = f"{Path(sys.executable).parent}{os.pathsep}/usr/local/bin:/usr/bin:/bin"
"""A container's PATH: the project's environment first (the node has no images)."""
IMAGE_CONFIG: dict[str, tuple[list[str], list[str], int]] = {
    "*facescan-operator*": (["facescan"], ["operator"], 10001),
    "*facescan-detector*": (["facescan-detector"], ["run"], 10001),
}
"""ENTRYPOINT, CMD and USER of the project's images (operator/Dockerfile,
detector_image/Dockerfile): what their containers run when the spec leaves them out."""


class ConfigError(Exception):
    """A reference of the pod that does not resolve (Secret, key, PVC, PV, ...)."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) references in command, args and env values; $$ escapes."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]),
        text,
    )


def _field(pod: Obj, path: str) -> str:
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((pod["metadata"].get(match[1]) or {}).get(match[2], ""))
    value: Any = pod
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


class Resolver:
    def __init__(self, api: Api, pod: Obj, volume_dir: Path, api_port: int) -> None:
        self.api = api
        self.api_port = api_port
        self.pod = pod
        self.ns = pod["metadata"]["namespace"]
        self.volume_dir = volume_dir
        self._cache: dict[tuple[str, str], Obj] = {}

    async def _get(self, kind: str, name: str, optional: bool = False) -> Obj | None:
        key = (kind, name)
        if key not in self._cache:
            from facescan_devcluster.nodeagent import ApiError

            scope = "" if kind == "persistentvolumes" else f"/namespaces/{self.ns}"
            try:
                self._cache[key] = await self.api.call("GET", f"/api/v1{scope}/{kind}/{name}")
            except ApiError as exc:
                if exc.status == 404 and optional:
                    return None
                what = {404: "not found", 403: "forbidden"}.get(exc.status, str(exc))
                raise ConfigError(f'{kind[:-1]} "{name}" {what}') from exc
        return self._cache[key]

    async def _data(self, kind: str, name: str, optional: bool = False) -> dict[str, str]:
        obj = await self._get(kind, name, optional)
        if obj is None:
            return {}
        data = dict(obj.get("data") or {})
        if kind == "secrets":
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        return data

    async def launch_spec(self, container: Obj) -> Obj:
        env = await self._env(container)
        image = container.get("image", "")
        entrypoint, cmd, image_user = next(
            (c for pattern, c in IMAGE_CONFIG.items() if fnmatch.fnmatch(image, pattern)),
            ([], [], None),
        )
        # as a runtime: command replaces ENTRYPOINT (and CMD), args replace CMD
        command = container.get("command") or entrypoint
        args = container.get("args") or ([] if container.get("command") else cmd)
        if not command:
            raise ConfigError(
                f"the container has no command and the node agent knows no entrypoint of "
                f"image {image!r}"
            )
        argv = [expand(a, env) for a in command + args]
        uid, gid, groups = self._identity(container, image_user)
        mounts = await self._mounts(container, groups)
        return {
            "argv": argv,
            "env": env,
            "workingDir": container.get("workingDir") or "/",
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "mounts": mounts,
        }

    async def _env(self, container: Obj) -> dict[str, str]:
        meta = self.pod["metadata"]
        env = {"PATH": BASE_PATH, "HOSTNAME": meta["name"], "HOME": "/"}
        # a kubelet's variables of the API server's Service; here it is on 127.0.0.1
        port = str(self.api_port)
        env |= {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://127.0.0.1:{port}",
        }
        for source in container.get("envFrom") or ():
            prefix = source.get("prefix", "")
            ref = source.get("configMapRef") or source.get("secretRef") or {}
            kind = "configmaps" if "configMapRef" in source else "secrets"
            data = await self._data(kind, ref["name"], ref.get("optional", False))
            env |= {prefix + k: v for k, v in data.items()}
        for var in container.get("env") or ():
            value_from = var.get("valueFrom")
            if not value_from:
                env[var["name"]] = expand(var.get("value", ""), env)
            elif "fieldRef" in value_from:
                env[var["name"]] = _field(self.pod, value_from["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in value_from:
                resource = value_from["resourceFieldRef"]["resource"]
                kind, _, name = resource.partition(".")
                env[var["name"]] = str(
                    ((container.get("resources") or {}).get(kind) or {}).get(name, "0")
                )
            else:
                kind = "secrets" if "secretKeyRef" in value_from else "configmaps"
                ref = value_from.get("secretKeyRef") or value_from.get("configMapKeyRef") or {}
                optional = ref.get("optional", False)
                data = await self._data(kind, ref["name"], optional)
                if ref["key"] in data:
                    env[var["name"]] = data[ref["key"]]
                elif not optional:
                    raise ConfigError(
                        f"couldn't find key {ref['key']} in {kind[:-1]} {self.ns}/{ref['name']}"
                    )
        return env

    def _identity(
        self, container: Obj, image_user: int | None
    ) -> tuple[int | None, int | None, list[int]]:
        pod_ctx = self.pod["spec"].get("securityContext") or {}
        ctx = pod_ctx | (container.get("securityContext") or {})
        uid, gid = ctx.get("runAsUser", image_user), ctx.get("runAsGroup")
        if uid == image_user and gid is None:
            gid = image_user
        if ctx.get("runAsNonRoot") and not uid:
            raise ConfigError(
                "container has runAsNonRoot and image will run as root (pod: runAsUser unset)"
            )
        if uid is not None and gid is None:
            gid = 0  # a runtime's default primary group when only the user is given
        groups = [] if gid is None else [int(gid)]  # as a runtime: the primary group first
        groups += [int(g) for g in pod_ctx.get("supplementalGroups") or ()]
        if pod_ctx.get("fsGroup") is not None:
            groups.append(int(pod_ctx["fsGroup"]))
        return uid, gid, list(dict.fromkeys(groups))

    async def _mounts(self, container: Obj, groups: list[int]) -> list[Obj]:
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes") or ()}
        mounts = []
        for mount in container.get("volumeMounts") or ():
            volume = volumes.get(mount["name"])
            if volume is None:
                raise ConfigError(f"volume {mount['name']} is not defined in the pod")
            source, read_only = await self._source(volume, groups)
            if mount.get("subPath"):
                source = source / mount["subPath"]
            mounts.append(
                {
                    "source": str(source),
                    "target": mount["mountPath"],
                    "readOnly": bool(mount.get("readOnly") or read_only),
                }
            )
        return mounts

    async def _source(self, volume: Obj, groups: list[int]) -> tuple[Path, bool]:
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            pvc = await self._get("persistentvolumeclaims", claim["claimName"])
            assert pvc is not None
            pv_name = (pvc.get("spec") or {}).get("volumeName")
            if not pv_name or (pvc.get("status") or {}).get("phase") != "Bound":
                raise ConfigError(f"persistentvolumeclaim {claim['claimName']} is not bound")
            pv = await self._get("persistentvolumes", pv_name)
            assert pv is not None
            spec = pv.get("spec") or {}
            path = (spec.get("hostPath") or spec.get("local") or {}).get("path")
            if not path:
                raise ConfigError(
                    f"persistentvolume {pv_name}: the node agent mounts hostPath and local "
                    "volumes only"
                )
            if not Path(path).exists():
                raise ConfigError(f"persistentvolume {pv_name}: {path} does not exist on the node")
            return Path(path), bool(claim.get("readOnly"))
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            kind = volume["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif not path.exists():
                raise ConfigError(f"hostPath {path} does not exist on the node")
            return path, False
        target = self.volume_dir / name
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o777)  # as a kubelet makes it
            return target, False
        files = await self._files(volume)
        target.mkdir(parents=True, exist_ok=True)
        kinds = ("configMap", "secret", "projected", "downwardAPI")
        source: Obj = next((volume[k] for k in kinds if k in volume), {})
        mode = int(source.get("defaultMode", 0o644))
        for relative, content in files.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(mode)
            if groups:
                os.chown(path, -1, groups[-1])
        return target, True

    async def _files(self, volume: Obj) -> dict[str, bytes]:
        """The files of a configMap, secret, downwardAPI or projected volume."""
        if "configMap" in volume or "secret" in volume:
            return await self._source_files(volume)
        if "projected" in volume:
            files: dict[str, bytes] = {}
            for source in volume["projected"].get("sources") or ():
                files |= await self._source_files(source)
            return files
        if "downwardAPI" in volume:
            return await self._source_files(volume)
        kinds = sorted(k for k in volume if k != "name")
        raise ConfigError(
            f"volume {volume['name']}: type {kinds} is not supported by the node agent"
        )

    async def _source_files(self, source: Obj) -> dict[str, bytes]:
        if "configMap" in source or "secret" in source:
            kind = "configmaps" if "configMap" in source else "secrets"
            ref = source.get("configMap") or source.get("secret") or {}
            name = str(ref.get("name") or ref.get("secretName") or "")
            data = await self._data(kind, name, ref.get("optional", False))
            items = ref.get("items")
            if items:
                return {i["path"]: data[i["key"]].encode() for i in items if i["key"] in data}
            return {k: v.encode() for k, v in data.items()}
        if "downwardAPI" in source:
            return {
                item["path"]: _field(self.pod, item["fieldRef"]["fieldPath"]).encode()
                for item in source["downwardAPI"].get("items") or ()
                if "fieldRef" in item
            }
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            account = self.pod["spec"].get("serviceAccountName") or "default"
            meta = self.pod["metadata"]
            request = {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": [token["audience"]] if token.get("audience") else None,
                    "expirationSeconds": token.get("expirationSeconds", 3607),
                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1"}
                    | {"name": meta["name"], "uid": meta["uid"]},
                },
            }
            path = f"/api/v1/namespaces/{self.ns}/serviceaccounts/{account}/token"
            reply = await self.api.call("POST", path, request)
            return {token["path"]: reply["status"]["token"].encode()}
        return {}
