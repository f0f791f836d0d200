// The panels' last state is saved in notebooks whose kernel loaded sandbox_magics, and in
// no other notebook.
//
// ipywidgets saves widget state into a notebook only when its global "Save Widget State
// Automatically" setting is on, for every notebook. Instead, for a notebook whose kernel's
// `sandbox_magics` comm has answered, we do what its widget manager does on save: write
// `get_state_sync({drop_defaults: true})` into the notebook's `widgets` metadata, so a
// notebook reopened without its kernel shows each panel as it was (as a snapshot, see
// style/index.css) instead of "model not found". The widget manager is found through the
// renderer factory ipywidgets adds to the notebook's rendermime; if that ever changes, the
// state is not saved and nothing else is affected.
import { NotebookPanel } from '@jupyterlab/notebook';

const WIDGET_VIEW = 'application/vnd.jupyter.widget-view+json';
const WIDGET_STATE = 'application/vnd.jupyter.widget-state+json';

interface IWidgetManager {
  get_state_sync(options: { drop_defaults: boolean }): unknown;
}

const managers = new WeakMap<NotebookPanel, IWidgetManager>();
const watched = new WeakSet<NotebookPanel>();

/** From now on, saving ``panel`` writes its widget state (idempotent). */
export function saveWidgetState(panel: NotebookPanel): void {
  if (watched.has(panel)) {
    return;
  }
  watched.add(panel);
  void findManager(panel).then(manager => manager && managers.set(panel, manager));
  panel.context.saveState.connect((_, state) => {
    const manager = managers.get(panel);
    if (state === 'started' && manager) {
      panel.context.model.setMetadata('widgets', {
        [WIDGET_STATE]: manager.get_state_sync({ drop_defaults: true })
      });
    }
  });
}

async function findManager(panel: NotebookPanel): Promise<IWidgetManager | null> {
  const factory = panel.content.rendermime.getFactory(WIDGET_VIEW);
  if (!factory) {
    return null;
  }
  const renderer = factory.createRenderer({
    mimeType: WIDGET_VIEW,
    sanitizer: panel.content.rendermime.sanitizer,
    resolver: null,
    linkHandler: null,
    latexTypesetter: null
  } as any) as any;
  try {
    const manager = await renderer._manager?.promise;
    return typeof manager?.get_state_sync === 'function' ? manager : null;
  } catch {
    return null;
  } finally {
    renderer.dispose();
  }
}
