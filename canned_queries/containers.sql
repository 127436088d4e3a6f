-- title: Containers
-- description: LXC/Incus instances each agent listed most recently (incus/lxc list): state, memory and root-disk use in bytes, CPU time in seconds.
select
  c.server_id,
  coalesce(s.display_name, s.hostname) as server,
  c.project,
  c.name,
  c.kind,
  c.type,
  c.state,
  c.memory_bytes,
  c.disk_bytes,
  c.cpu_seconds,
  c.ipv4,
  c.ts
from containers c
join servers s on s.id = c.server_id
where (:_scope_all or c.server_id in (select value from json_each(:_scope_servers)))
order by s.name_key, s.id, c.project, c.name
