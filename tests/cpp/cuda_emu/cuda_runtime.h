// Emulation stand-in for the CUDA runtime header (see pws_emu.h).
#pragma once
#include "pws_emu.h"
