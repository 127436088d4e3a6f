-- title: Free GPUs now
-- description: Hosts with at least :count free GPUs (default 1), best first. A GPU is free when it has no compute process, is not allocated to a Slurm job (the agent reads scontrol show job -d where Slurm is installed: a job's GPUs are held from allocation, before its first CUDA process), utilization.gpu, utilization.encoder and utilization.decoder ≤ :max_util % (default from config, 10), MIG disabled (a MIG GPU is never offered whole: for :count 1 its free GPU instances are offered one per row instead, with mig_profile and env CUDA_VISIBLE_DEVICES=MIG-<uuid>; a GPU instance is free when every one of its compute instances was read from nvidia-smi's table within 300 s of the report and runs no process, and every process on that GPU is placed in an instance; a GPU instance split into several compute instances is offered once, as the compute instance with the most SMs, because its compute instances share its memory; docs/api.md) and at least :min_free_mib MiB free as the driver reports memory.free (default 0); :model filters by name (substring), :group by host group (a server in group :group from any source: agent config, Slurm partition, admin; empty = all). Only hosts reporting now without a problem are offered: offline, stale, error (GPU collection failing, a GPU lost, marked faulty) and maintenance hosts, and GPUs marked maintenance/fault or missing, are left out. free_gpus counts every free GPU of the host and vendor, free_indexes lists them (nvidia-smi indexes). One row per host and vendor (a job runs on one vendor's GPUs). visible_devices lists the :count GPUs to use by index — for :count > 1 a set on one NUMA node joined by NVLink where nvidia-smi topo -m shows one (link: the weakest connection inside the set, NV<n> = n bonded NVLinks, else PIX/PXB/PHB/NODE/SYS; numa_node: their NUMA node), then the most free memory — and env the variable to set: NVIDIA CUDA_VISIBLE_DEVICES (nvidia-smi indexes, with CUDA_DEVICE_ORDER=PCI_BUS_ID; also in cuda_visible_devices), AMD ROCR_VISIBLE_DEVICES (HIP_VISIBLE_DEVICES takes the same indexes; ROCR_VISIBLE_DEVICES also takes the GPU-… ids in gpu_uuids), Intel ZE_AFFINITY_MASK; gpu_uuids the same GPUs by UUID.
with params as (
  select
    cast(coalesce(nullif(:min_free_mib, ''), 0) as integer) as min_free,
    cast(coalesce(nullif(:max_util, ''), :_config_free_max_util) as real) as max_util,
    -- 1..16 (gpu_set()'s bound, security review N1)
    min(16, max(1, cast(coalesce(nullif(:count, ''), 1) as integer))) as want,
    coalesce(:model, '') as model
),
free as (
  select
    g.server_id, coalesce(s.display_name, s.hostname) as server, g.vendor, g.gpu_index, g.uuid, g.name, g.numa_node,
    coalesce(g.memory_free_mib, g.memory_total_mib - coalesce(g.memory_used_mib, 0)) as free_mib
  from gpus g
  join server_state s on s.id = g.server_id
  join params p
  where s.state = 'online'
    and g.present and g.status = 'active'
    and g.process_count = 0
    and g.slurm_job is null
    and max(coalesce(g.utilization_gpu, 0), coalesce(g.utilization_encoder, 0), coalesce(g.utilization_decoder, 0))
        <= p.max_util
    and not coalesce(g.mig_mode, 0)
    and coalesce(g.memory_free_mib, g.memory_total_mib - coalesce(g.memory_used_mib, 0)) >= p.min_free
    and instr(lower(g.name), lower(p.model)) > 0
    and (:_scope_all or g.server_id in (select value from json_each(:_scope_servers)))
    and (coalesce(:group, '') = '' or g.server_id in (select server_id from server_groups where grp = :group))
),
-- Per host and vendor: the :count GPUs to use, chosen by gpu_set() (server_monitor/core/topology.py):
-- one NUMA node and NVLink first (nvidia-smi topo -m, gpu_links), then the most free memory.
hosts as (
  select f.server_id, f.server, f.vendor, count(*) as free_gpus,
    group_concat(f.gpu_index, ',') as free_indexes,
    gpu_set(json_group_array(json_object('i', f.gpu_index, 'numa', f.numa_node, 'free', f.free_mib, 'uuid', f.uuid,
                                         'name', f.name)),
            (select json_group_array(json_array(l.gpu_a, l.gpu_b, l.link)) from gpu_links l
              where l.server_id = f.server_id and f.vendor = 'nvidia'),
            p.want) as chosen
  from free f join params p
  group by f.server_id, f.vendor
  having count(*) >= p.want
),
-- MIG (docs/api.md, free_gpus): the unit offered is a GPU instance (GI), the memory a job gets alone.
-- A GI is free when each of its compute instances (CI) has a known state (read from nvidia-smi's table,
-- sampled_at within 300 s of the report) and none runs a process: CIs of one GI share its memory, so a
-- CI beside a busy sibling is not free. A GPU with a compute process the agent could not place in an
-- instance (started after the last table read), or allocated to a Slurm job, offers none. A free GI is
-- offered once, as its CI with the most SMs (CUDA sees one MIG device per process):
-- env CUDA_VISIBLE_DEVICES=MIG-<uuid>.
mig_gi as (
  select m.server_id, m.gpu_id, m.gpu_instance_id, sum(m.process_count) as busy,
    sum(m.sampled_at is null or m.memory_total_mib is null or m.memory_used_mib is null
        or m.ts - m.sampled_at > 300) as unknown
  from mig_devices m
  where (:_scope_all or m.server_id in (select value from json_each(:_scope_servers)))
    and (coalesce(:group, '') = '' or m.server_id in (select server_id from server_groups where grp = :group))
  group by m.server_id, m.gpu_id, m.gpu_instance_id
),
mig_placed as (
  select m.gpu_id, sum(m.process_count) as placed from mig_devices m group by m.gpu_id
),
mig_free as (
  select m.server_id, coalesce(s.display_name, s.hostname) as server, m.uuid, m.profile, g.name,
    m.memory_total_mib - m.memory_used_mib as free_mib,
    row_number() over (partition by m.server_id, m.gpu_id, m.gpu_instance_id
                       order by m.sm_count desc, m.mig_index) as pick
  from mig_devices m
  join mig_gi gi on gi.server_id = m.server_id and gi.gpu_id = m.gpu_id and gi.gpu_instance_id = m.gpu_instance_id
  join mig_placed mp on mp.gpu_id = m.gpu_id
  join gpus g on g.id = m.gpu_id
  join server_state s on s.id = m.server_id
  join params p
  where s.state = 'online'
    and g.present and g.status = 'active' and g.mig_mode = 1 and p.want = 1
    and g.slurm_job is null
    and gi.busy = 0 and gi.unknown = 0
    and g.process_count = mp.placed
    and m.memory_total_mib - m.memory_used_mib >= p.min_free
    and instr(lower(g.name || ' ' || coalesce(m.profile, '')), lower(p.model)) > 0
)
select
  h.server_id,
  h.server,
  h.vendor,
  h.free_gpus,
  json_extract(h.chosen, '$.devices') as visible_devices,
  case h.vendor when 'amd' then 'ROCR_VISIBLE_DEVICES=' when 'intel' then 'ZE_AFFINITY_MASK='
    else 'CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=' end || json_extract(h.chosen, '$.devices') as env,
  case when h.vendor = 'nvidia' then json_extract(h.chosen, '$.devices') end as cuda_visible_devices,
  json_extract(h.chosen, '$.uuids') as gpu_uuids,
  json_extract(h.chosen, '$.min_free') as min_free_mib,
  json_extract(h.chosen, '$.models') as gpu_models,
  null as mig_profile,
  json_extract(h.chosen, '$.link') as link,
  json_extract(h.chosen, '$.numa') as numa_node,
  h.free_indexes
from hosts h
union all
select m.server_id, m.server, 'nvidia', 1, m.uuid, 'CUDA_VISIBLE_DEVICES=' || m.uuid, m.uuid, m.uuid, m.free_mib,
  m.name || ' MIG ' || coalesce(m.profile, '?'), m.profile, null, null, null
from mig_free m
where m.pick = 1
order by min_free_mib desc, free_gpus desc, server, vendor
