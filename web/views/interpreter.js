// The interpreter: a sign-language camera (pinned large for everyone) and a caption box.
import { el } from '../core.js';

export default {
  role: 'interpreter',
  sends: ['camera'],
  deviceTest: true,
  kiosk: false,
  setup() { el.captionWriter.hidden = false; },
  controls() {
    el.hand.hidden = true;
    el.floorPublish.hidden = true;
    el.captionWriter.hidden = false;
  },
};
