// Widgets of a notebook reloaded while its kernel is busy.
//
// On (re)connecting, the ipywidgets manager asks the kernel for its widget comms with a
// comm_info_request on the main shell, which answers only when the running cell ends; until
// then every panel says "Loading widget...". A kernel with subshells (ipykernel 7) answers
// the same request on a subshell at once, and the manager's next messages already travel
// over comm subshells. So, for kernels that support subshells, comm_info_request goes to a
// subshell of its own (created once per kernel connection).
import { Kernel, KernelMessage } from '@jupyterlab/services';

const patched = new WeakSet<Kernel.IKernelConnection>();

export function commInfoOverSubshell(kernel: Kernel.IKernelConnection | null | undefined): void {
  if (!kernel || patched.has(kernel)) {
    return;
  }
  patched.add(kernel);
  const original = kernel.requestCommInfo.bind(kernel);
  let subshell: Promise<string | null> | null = null;
  kernel.requestCommInfo = async (content: KernelMessage.ICommInfoRequestMsg['content']) => {
    await kernel.info;
    if (!kernel.supportsSubshells || kernel.subshellId) {
      return original(content);
    }
    if (!subshell) {
      subshell = kernel
        .requestCreateSubshell({})
        .done.then(reply => (reply.content as any).subshell_id as string)
        .catch(() => null);
    }
    const id = await subshell;
    if (!id) {
      return original(content);
    }
    const msg = KernelMessage.createMessage({
      msgType: 'comm_info_request',
      channel: 'shell',
      username: kernel.username,
      session: kernel.clientId,
      subshellId: id,
      content
    });
    return (await kernel.sendShellMessage(msg, true).done) as KernelMessage.ICommInfoReplyMsg;
  };
  kernel.statusChanged.connect((_, status) => {
    if (status === 'restarting' || status === 'autorestarting') {
      subshell = null; // a restarted kernel has no subshells
    }
  });
}
