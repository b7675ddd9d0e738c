"""The MLOps page: static HTML that renders the JSON routes (kept in Python so wheels carry it)."""

from __future__ import annotations

__all__ = ["PAGE_HTML"]

PAGE_HTML = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>MLOps</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1f2933; }
  h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e4e7eb; font-size: .9rem; }
  th { background: #f5f7fa; }
  .Healthy { color: #0b7a33; } .Failed, .Unschedulable { color: #b42318; }
  .Unhealthy { color: #b54708; } .Transitioning { color: #175cd3; }
  .muted { color: #7b8794; font-size: .85rem; }
</style>
</head>
<body>
<h1>MLOps</h1>
<h2>Models</h2>
<table id="models">
<thead><tr><th>Model</th><th>Version</th><th>Created</th><th>Tags</th></tr></thead>
<tbody></tbody>
</table>
<h2>Deployments</h2>
<table id="deployments">
<thead><tr>
<th>Service</th><th>Target</th><th>State</th><th>Models</th><th>Image</th><th>URL</th>
</tr></thead>
<tbody></tbody>
</table>
<p id="unavailable" class="muted"></p>
<script>
// Same-origin calls: the browser sends the Airflow session cookie the routes require.
function row(table, cells, cls) {
  const tr = document.createElement("tr");
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (cls && cls[i]) td.className = cls[i];
    tr.appendChild(td);
  });
  document.querySelector(`#${table} tbody`).appendChild(tr);
}
async function getJson(path) {
  const r = await fetch(path, {credentials: "same-origin"});
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}
getJson("api/models").then(data => {
  for (const m of data.models) for (const v of m.versions)
    row("models", [m.name, v.version, v.creation_timestamp || v.created || "", JSON.stringify(v.tags || {})]);
  if (!data.models.length) row("models", ["no registered models"]);
}).catch(e => row("models", [e.message]));
getJson("api/deployments").then(data => {
  for (const d of data.deployments)
    row("deployments", [d.name, d.target, d.state,
                        (d.models || []).map(m => `${m.name}:${m.version}`).join(", "), d.image, d.url],
        [null, null, d.state]);
  if (!data.deployments.length) row("deployments", ["no deployments"]);
  const down = Object.entries(data.unavailable || {});
  document.getElementById("unavailable").textContent =
    down.length ? "Unavailable targets: " + down.map(([t, why]) => `${t} (${why})`).join("; ") : "";
}).catch(e => row("deployments", [e.message]));
</script>
</body>
</html>
"""
