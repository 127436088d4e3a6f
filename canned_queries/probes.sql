-- title: Reachability probes
-- description: Latest result of each agent's URL probes (agent_config.yaml probes): ok, latency to the response headers in ms, HTTP status or network error.
select
  p.server_id,
  coalesce(s.display_name, s.hostname) as server,
  p.name,
  p.url,
  p.ok,
  p.latency_ms,
  p.status,
  p.error,
  p.checked_at
from probes p
join servers s on s.id = p.server_id
where (:_scope_all or p.server_id in (select value from json_each(:_scope_servers)))
order by s.name_key, s.id, p.name
