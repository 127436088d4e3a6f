-- title: GPU processes
-- description: Compute processes in each server's latest report, with owner (user), container or job, VRAM in MiB (null where the driver does not report it, e.g. Windows WDDM) and, for AMD/Intel GPUs, utilization_gpu: the busiest DRM engine of the process over the last interval, in %. A row with container_kind slurm-alloc and no pid is a GPU allocated to Slurm job (container) of user with no process on it yet.
select
  p.server_id,
  coalesce(s.display_name, s.hostname) as server,
  p.gpu_id,
  g.gpu_index,
  g.uuid as gpu_uuid,
  g.vendor,
  p.pid,
  p.process_name,
  p.used_gpu_memory_mib,
  p.utilization_gpu,
  p.user,
  p.uid,
  p.container,
  p.container_kind,
  p.ts
from servers s
-- cross join + indexed by: servers drive the plan (one index search per server), whatever the statistics say
cross join gpu_processes p indexed by gpu_processes_server_ts on p.server_id = s.id and p.ts = s.last_ts
left join gpus g on g.id = p.gpu_id
where (:_scope_all or s.id in (select value from json_each(:_scope_servers)))
  and :_scope_processes
order by s.name_key, s.id, g.gpu_index, p.used_gpu_memory_mib desc
