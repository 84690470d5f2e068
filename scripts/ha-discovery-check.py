#!/usr/bin/env python3
"""Validates llamabus's Home Assistant discovery messages with Home Assistant's own code.

Reads JSON lines `{"topic": ..., "payload": {...}}` (the output of `llamabus homeassistant`)
on stdin and, for each message, does what Home Assistant's MQTT discovery does with it:
  - the topic must match HA's discovery TOPIC_MATCHER and name a supported component;
  - the origin block must pass MQTT_ORIGIN_INFO_SCHEMA;
  - the payload must pass the platform's DISCOVERY_SCHEMA (sensor, text, button). Those
    schemas drop unknown keys silently (vol.REMOVE_EXTRA), so a key the schema dropped is
    reported here as an error;
and renders every value template with HA's template engine against the status documents
given as arguments (files: an online and an offline status), printing what each sensor
would show.

Needs a Python with the `homeassistant` package (2024.11 or later), e.g.
  python3.13 -m venv /tmp/ha && /tmp/ha/bin/pip install homeassistant
  llamabus homeassistant --config cfg.toml | /tmp/ha/bin/python scripts/ha-discovery-check.py on.json off.json
Exit status 1 on any error.
"""

import asyncio
import json
import re
import sys
import tempfile


async def main() -> int:
    from homeassistant.core import HomeAssistant
    from homeassistant.helpers import frame

    with tempfile.TemporaryDirectory() as d:
        # Template options are checked against a running Home Assistant.
        hass = HomeAssistant(d)
        frame.async_setup(hass)
        try:
            return check(hass)
        finally:
            await hass.async_stop(force=True)


def check(hass) -> int:
    from homeassistant.components.mqtt import button, sensor, text
    from homeassistant.components.mqtt.const import SUPPORTED_COMPONENTS
    from homeassistant.components.mqtt.discovery import TOPIC_MATCHER
    from homeassistant.components.mqtt.schemas import MQTT_ORIGIN_INFO_SCHEMA

    schemas = {
        "sensor": sensor.DISCOVERY_SCHEMA,
        "text": text.DISCOVERY_SCHEMA,
        "button": button.DISCOVERY_SCHEMA,
    }
    messages = [json.loads(line) for line in sys.stdin if line.strip()]
    statuses = [open(p, encoding="utf-8").read() for p in sys.argv[1:]]
    errors = []
    templates = []
    for m in messages:
        topic, payload = m["topic"], m["payload"]
        prefix, _, rest = topic.partition("/")
        match = TOPIC_MATCHER.fullmatch(rest)
        if not match:
            errors.append(f"{topic}: not a discovery topic HA accepts")
            continue
        component = match.group("component")
        if component not in SUPPORTED_COMPONENTS or component not in schemas:
            errors.append(f"{topic}: component {component} unsupported here")
            continue
        try:
            MQTT_ORIGIN_INFO_SCHEMA(payload["origin"])
        except Exception as e:  # noqa: BLE001
            errors.append(f"{topic}: origin: {e}")
        try:
            validated = schemas[component](dict(payload))
        except Exception as e:  # noqa: BLE001
            errors.append(f"{topic}: {component} schema: {e}")
            continue
        dropped = set(payload) - set(validated)
        if dropped:
            errors.append(f"{topic}: keys HA ignores: {sorted(dropped)}")
            continue
        for key in ("value_template", "json_attributes_template"):
            if key in payload:
                templates.append((topic, key, payload[key]))
        for a in payload.get("availability", []):
            templates.append((topic, "availability", a["value_template"]))
        print(f"ok   {topic}")
    if statuses:
        errors += render(hass, templates, statuses)
    for e in errors:
        print(f"FAIL {e}")
    print(f"{len(messages)} messages, {len(errors)} errors")
    return 1 if errors or not messages else 0


def render(hass, templates, statuses):
    """Renders each template as the MQTT integration does (value_json from the payload)."""
    from homeassistant.helpers.template import Template

    errors = []
    seen = set()
    for topic, key, tpl in templates:
        if (key, tpl) in seen:
            continue
        seen.add((key, tpl))
        for status in statuses:
            state = json.loads(status).get("state")
            try:
                out = Template(tpl, hass).async_render_with_possible_json_value(
                    status, "<ERROR>"
                )
            except Exception as e:  # noqa: BLE001
                out = f"<ERROR {e}>"
            if "<ERROR" in str(out):
                errors.append(f"{topic}: {key} on the {state} status: {out}")
            print(f"     {key:24} {state:8} -> {out!r}   ({topic.split('/')[-2]})")
    return errors


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
