"""``ls-space-sync webhooks install|remove``: our webhook on each synced project, idempotently.

Ours is the project webhook whose URL is :func:`webhook_url` (``server.public_url`` or
``http://127.0.0.1:<server.port>``, plus ``/webhook``). It sends every event with its payload and
carries the secret in the ``server.webhook_header`` header. Installing again changes nothing, or
updates the header after the secret changed; removing deletes only ours.

Label Studio blocks webhooks to loopback and private addresses unless the server runs with
``SSRF_PROTECTION_ENABLED=false``; a blocked webhook is saved but never delivered.
"""

from __future__ import annotations

from dataclasses import dataclass

from ls_space_sync.labelstudio.client import LabelStudioClient
from ls_space_sync.settings import ConfigError, Settings


@dataclass(frozen=True)
class WebhookChange:
    """What ``install``/``remove`` did on one project: ``created``, ``updated``, ``unchanged``, ``removed``, ``absent``."""

    project_id: int
    action: str
    webhook_id: int | None
    url: str

    def summary(self) -> str:
        """One line for people."""
        ident = f"webhook {self.webhook_id}" if self.webhook_id is not None else "no webhook"
        return f"project {self.project_id}: {self.action} {ident} -> {self.url}"


def webhook_url(settings: Settings) -> str:
    """Where Label Studio should send events: ``<public_url or http://127.0.0.1:port>/webhook``."""
    base = settings.server.public_url or f"http://127.0.0.1:{settings.server.port}"
    return base.rstrip("/") + "/webhook"


def _headers(settings: Settings) -> dict[str, str]:
    if settings.server.webhook_secret is None or not settings.server.webhook_secret.get_secret_value():
        raise ConfigError("server.webhook_secret is not set: webhooks need a shared secret; set "
                          "LS_SPACE_SYNC__SERVER__WEBHOOK_SECRET (e.g. to the output of `openssl rand -hex 32`)")
    return {settings.server.webhook_header: settings.server.webhook_secret.get_secret_value()}


def install(client: LabelStudioClient, settings: Settings, project_ids: list[int]) -> list[WebhookChange]:
    """Make sure each project has exactly one webhook of ours, with the current secret header.

    Raises:
        ConfigError: no ``server.webhook_secret``.
        LabelStudioError: the server refused (e.g. the token may not manage webhooks) or is down.
    """
    headers = _headers(settings)
    url = webhook_url(settings)
    changes = []
    for pid in project_ids:
        ours = [h for h in client.webhooks(pid) if h.get("url") == url]
        if not ours:
            hook = client.create_webhook(pid, url, headers)
            changes.append(WebhookChange(pid, "created", hook.get("id"), url))
            continue
        first, extra = ours[0], ours[1:]
        for dup in extra:
            client.delete_webhook(dup["id"])
        ok = (first.get("headers") == headers and first.get("send_payload") is not False
              and first.get("send_for_all_actions") is not False and first.get("is_active") is not False)
        if not ok:
            client.update_webhook(first["id"], url, headers)
        changes.append(WebhookChange(pid, "unchanged" if ok and not extra else "updated", first["id"], url))
    return changes


def remove(client: LabelStudioClient, settings: Settings, project_ids: list[int]) -> list[WebhookChange]:
    """Delete our webhook (by URL) from each project; other webhooks stay.

    Raises:
        LabelStudioError: the server refused or is down.
    """
    url = webhook_url(settings)
    changes = []
    for pid in project_ids:
        ours = [h for h in client.webhooks(pid) if h.get("url") == url]
        for hook in ours:
            client.delete_webhook(hook["id"])
            changes.append(WebhookChange(pid, "removed", hook["id"], url))
        if not ours:
            changes.append(WebhookChange(pid, "absent", None, url))
    return changes


# --- on the configured projects ---------------------------------------------------------------

def apply(settings: Settings, what: str, project_ids: list[int] | None = None) -> list[WebhookChange]:
    """Run :func:`install` or :func:`remove` (``what``) on the given or configured projects.

    Raises:
        ConfigError: no Label Studio URL or key, or (install) no webhook secret.
        LabelStudioError: the server refused or is down.
    """
    client = LabelStudioClient.from_settings(settings)
    try:
        ids = list(project_ids or []) or (client.project_ids() if settings.projects == "all"
                                          else list(settings.projects))
        return (install if what == "install" else remove)(client, settings, ids)
    finally:
        client.close()

