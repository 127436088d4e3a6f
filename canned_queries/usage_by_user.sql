-- title: GPU usage by user, now
-- description: Who holds GPUs right now, from each server's newest report: per user (and container or job), the GPUs and servers they use, their processes and the VRAM they hold (MiB). A GPU allocated to a user's Slurm job with no process yet counts among their gpus (container slurm-alloc job <id>), not among their processes.
select
  coalesce(p.user, '(unknown)') as user,
  count(distinct p.server_id) as servers,
  count(distinct p.gpu_id) as gpus,
  count(p.pid) as processes,
  sum(p.used_gpu_memory_mib) as used_gpu_memory_mib,
  group_concat(distinct coalesce(s.display_name, s.hostname)) as server_names,
  group_concat(distinct p.container) as containers
from servers s
-- cross join + indexed by: servers drive the plan (one index search per server), whatever the statistics say
cross join gpu_processes p indexed by gpu_processes_server_ts on p.server_id = s.id and p.ts = s.last_ts
where (:_scope_all or s.id in (select value from json_each(:_scope_servers)))
  and :_scope_processes
group by 1
order by used_gpu_memory_mib desc, gpus desc
