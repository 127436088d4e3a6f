-- title: Fleet grid: GPUs
-- description: Optional :servers, a JSON array of server ids, limits the rows to those servers. Latest values of every GPU shown in the fleet grid (GET /api/fleet), in server and index order: utilization.gpu %, memory MiB, temperature.gpu °C, power.draw W, MIG mode, compute process count, admin status, utilization.encoder/decoder %, health badge (ok / warning / critical) with its reasons, last XID code, the Slurm job holding the GPU (slurm_job, slurm_user; null without Slurm). GPUs missing from their server's latest report (present = 0) stay listed as lost until an admin marks them removed (removed_at).
select
  g.id,
  g.server_id,
  g.gpu_index,
  g.vendor,
  g.name,
  g.pci_bus_id,
  g.present,
  g.status,
  g.status_note,
  g.utilization_gpu,
  g.memory_used_mib,
  g.memory_total_mib,
  g.temperature_gpu_c,
  g.power_draw_w,
  g.power_limit_w,
  g.mig_mode,
  g.process_count,
  g.busy,
  g.ecc_errors_uncorrected_volatile_total,
  g.utilization_encoder,
  g.utilization_decoder,
  g.health,
  g.health_reasons,
  g.xid_last,
  g.slurm_job,
  g.slurm_user
from gpus g
where (g.present or g.removed_at is null)
  and (coalesce(:servers, '') = '' or g.server_id in (select value from json_each(:servers)))
  and (:_scope_all or g.server_id in (select value from json_each(:_scope_servers)))
order by g.server_id, g.present desc, g.gpu_index
