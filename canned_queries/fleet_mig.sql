-- title: Fleet grid: MIG devices
-- description: Optional :servers, a JSON array of server ids, limits the rows to those servers. The MIG devices of MIG-enabled GPUs shown split in the fleet grid (GET /api/fleet): GPU (gpu_id), profile (e.g. 3g.40gb), GPU instance id, MIG device UUID (CUDA_VISIBLE_DEVICES=MIG-...), memory used/total MiB, processes in the instance, compute instance id and when the agent read its usage (sampled_at, null = not read yet), for the free / busy / shared / unknown state of each device (server_monitor/serving/fleet.py mig_state).
select
  m.gpu_id,
  m.server_id,
  m.mig_index,
  m.uuid,
  m.profile,
  m.gpu_instance_id,
  m.memory_used_mib,
  m.memory_total_mib,
  m.process_count,
  m.compute_instance_id,
  m.sampled_at,
  m.ts
from mig_devices m
where (coalesce(:servers, '') = '' or m.server_id in (select value from json_each(:servers)))
  and (:_scope_all or m.server_id in (select value from json_each(:_scope_servers)))
order by m.server_id, m.gpu_id, m.mig_index
