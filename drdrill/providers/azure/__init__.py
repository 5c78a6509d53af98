"""Azure provider: managed-disk snapshots restored to disks (azure.disk) and to VMs (azure.vm).

One resource group per drill (`drdrill-<drill id>`, tagged) holds everything the drill creates:
a VNet with one subnet and no peering or gateway, an NSG that denies all outbound traffic and
admits inbound traffic only from `isolation.allow_ingress_from`, the restored disks, NICs (no
public IP) and VMs, each tagged too. Teardown and the orphan sweep are the provider template's
(drdrill/providers/base.py): they delete the drill's tagged resources one by one, in DELETE_ORDER,
then the group, which is kept, and reported, when it holds anything without the drill's tag.

Modules: `primitives` (clients, error mapping, waiting on operations, inventory / current_tags /
delete), `isolation` (the VNet and NSG, and the proof of isolation), `probe` (the VM inside the
VNet that runs the checks, `isolation.probe.azure`), `secrets` (the probe's Key Vault references),
`disk` and `vm` (recovery points, restore, readiness of each target kind), `discover` (selections
by tag and resource group, and the protected inventory, for coverage).

The clients are the real azure-mgmt-* SDK clients (synchronous; activities run in a thread pool).
Bodies are sent and read in ARM's wire JSON (the SDK's models are mappings over it), so the
REST contract is exactly what this package writes. Every REST operation used:

  GET    /subscriptions/{s}/providers/Microsoft.Compute/snapshots                            2026-03-02
  GET    /subscriptions/{s}/providers/Microsoft.Compute/disks                                2026-03-02  (selections, coverage)
  GET    /subscriptions/{s}/providers/Microsoft.Compute/virtualMachines                      2026-04-01  (selections, coverage)
  GET|PUT|PATCH|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{disk}   2026-03-02
  GET|PUT|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}  2026-04-01
  GET    /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}/instanceView  2026-04-01
  GET|PUT|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/networkSecurityGroups/{nsg}  2026-03-01
  GET|PUT|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/{vnet}      2026-03-01
  GET    /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/{vnet}/subnets/{subnet}  2026-03-01
  GET|PUT|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/networkInterfaces/{nic}     2026-03-01
  GET|PUT|DELETE /subscriptions/{s}/resourcegroups/{rg}                                     2025-04-01
  GET    /subscriptions/{s}/resourcegroups?$filter=tagName eq 'drdrill:drill-id'             2025-04-01
  GET    /subscriptions/{s}/resourcegroups/{rg}/resources                                    2025-04-01
  and the long-running-operation monitors the responses point at (Azure-AsyncOperation /
  Location): .../providers/Microsoft.{Compute,Network}/locations/{l}/operations/{id} and
  /subscriptions/{s}/operationresults/{id}.

deploy/azure/role.json is the least-privilege custom role for exactly these.

The package's modules: schema.py (its part of the drill format, read without any SDK: see
drdrill/providers/registry.py) and provider.py (AzureProvider, imported only by a worker that drills azure).
"""
