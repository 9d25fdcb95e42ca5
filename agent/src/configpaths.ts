/** Where the agent's configuration is read from (config.ts merges them in this order). */
export const DEFAULT_MAIN_FILE = '/etc/liveup/agent.json';
export const DEFAULT_DROP_IN_DIR = '/etc/liveup/agent.d';
/**
 * The machine's own drop-ins, merged after the image's: on the persistent data
 * partition (mounted on /var/lib/liveup by the initramfs), so what is set on
 * one machine — its fleet enrollment — survives reboots and new generations,
 * while /etc/liveup comes fresh from each image.
 */
export const DEFAULT_LOCAL_DROP_IN_DIR = '/var/lib/liveup/agent.d';
