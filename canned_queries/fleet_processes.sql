-- title: Fleet grid: GPU processes
-- description: Optional :servers, a JSON array of server ids, limits the rows to those servers. Compute processes of each server's latest report for the fleet grid (GET /api/fleet): GPU, PID, process name, VRAM MiB, user, container or job, MIG GPU instance id (null outside MIG). Empty for viewers who may not see processes.
select
  p.server_id,
  p.gpu_id,
  p.pid,
  p.process_name,
  p.used_gpu_memory_mib,
  p.user,
  p.uid,
  p.container,
  p.container_kind,
  p.gpu_instance_id
from servers s
-- cross join + indexed by: servers drive the plan (one index search per server), whatever the statistics say
cross join gpu_processes p indexed by gpu_processes_server_ts on p.server_id = s.id and p.ts = s.last_ts
where (coalesce(:servers, '') = '' or s.id in (select value from json_each(:servers)))
  and (:_scope_all or s.id in (select value from json_each(:_scope_servers)))
  and :_scope_processes
order by p.server_id, p.gpu_id, p.used_gpu_memory_mib desc
